#!/usr/bin/perl
# Catalyst's own session store, Catalyst::Plugin::Session::Store::FastMmap, used without a
# Catalyst application: a class that is its own context, as the plugin's methods expect.
#
#   perl store.pl FILE write SID      store a session as Catalyst::Plugin::Session writes one
#   perl store.pl FILE read SID       print what Perl sees in the session (one line per fact)
#   perl store.pl FILE increment SID [N]  count += 1 with get_and_set_session_data (N times)
use strict;
use warnings;
use B ();

package StoreOnly;
use parent -norequire, 'Catalyst::Plugin::Session::Store::FastMmap';
require Catalyst::Plugin::Session::Store::FastMmap;

my %config;
sub _session_plugin_config { \%config }
sub debug { 0 }

package main;

binmode STDOUT, ':encoding(UTF-8)';
my ($file, $command, $sid, $times) = @ARGV;
die "usage: store.pl FILE write|read|increment SID\n" unless $sid;
$config{storage} = $file;
# Keep the file when this process exits (Cache::FastMmap deletes a file it created).
$config{unlink_on_exit} = 0;
StoreOnly->setup_session;

# What kind of scalar Perl holds: a number (IV/NV without a string) or a string.
sub kind {
    my ($value) = @_;
    return 'undef' unless defined $value;
    return ref $value if ref $value;
    my $flags = B::svref_2object(\$value)->FLAGS;
    return 'string' if $flags & B::SVf_POK;
    return 'number' if $flags & (B::SVf_IOK | B::SVf_NOK);
    return 'other';
}

if ($command eq 'write') {
    my $now = time;
    # The order of Catalyst's finalize: expires (finalize_headers), then the session.
    StoreOnly->store_session_data("expires:$sid" => $now + 7200);
    StoreOnly->store_session_data("session:$sid" => {
        __created => $now,
        __updated => $now,
        count     => 41,
        user      => "zo\x{eb}",
        roles     => ['admin', 'dev'],
        prefs     => { theme => 'dark', size => 12.5 },
        __flash   => { msg => 'from perl' },
    });
} elsif ($command eq 'read') {
    my $session = StoreOnly->get_session_data("session:$sid");
    my $expires = StoreOnly->get_session_data("expires:$sid");
    unless ($session) { print "no session\n"; exit 0 }
    print "expires ", kind($expires), " ", ($expires // ''), "\n";
    for my $key (sort keys %$session) {
        my $value = $session->{$key};
        if (ref $value eq 'HASH') {
            print "$key HASH ", join(',', map { "$_=" . kind($value->{$_}) . ":$value->{$_}" } sort keys %$value), "\n";
        } elsif (ref $value eq 'ARRAY') {
            print "$key ARRAY ", join(',', map { kind($_) . ":$_" } @$value), "\n";
        } else {
            print "$key ", kind($value), " $value\n";
        }
    }
} elsif ($command eq 'increment') {
    for (1 .. ($times // 1)) {
        StoreOnly->get_and_set_session_data("session:$sid", sub {
            my ($key, $data) = @_;
            $data->{count}++;
            return $data;
        });
    }
} else {
    die "unknown command $command\n";
}
