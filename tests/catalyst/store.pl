#!/usr/bin/perl
# Catalyst's own session store, Catalyst::Plugin::Session::Store::FastMmap, used without a
# Catalyst application: a class that is its own context, as the plugin's methods expect.
#
#   perl store.pl FILE write SID      store a session as Catalyst::Plugin::Session writes one
#   perl store.pl FILE read SID       print what Perl sees in the session (one line per fact)
#   perl store.pl FILE increment SID [N]  count += 1 with get_and_set_session_data (N times)
#   perl store.pl FILE write-objects SID  store a session holding objects (below)
#   perl store.pl FILE check-objects SID  thaw it and check the objects (Test::More; prints
#                                         `ok ...` lines, fails on any `not ok`)
use strict;
use warnings;
use B ();

package StoreOnly;
use parent -norequire, 'Catalyst::Plugin::Session::Store::FastMmap';
require Catalyst::Plugin::Session::Store::FastMmap;

my %config;
sub _session_plugin_config { \%config }
sub debug { 0 }

# Objects as Catalyst applications keep them in sessions: a blessed hash with methods, and a
# class that freezes itself with Storable hooks (as DateTime does), returning references to
# further values (an object of another class and an array) along with its string.
package MyApp::Zone;
sub new { my ($class, $name) = @_; bless { name => $name }, $class }
sub name { $_[0]{name} }

package MyApp::User;
sub new { my ($class, %fields) = @_; bless {%fields}, $class }
sub name { $_[0]{name} }
sub is_admin { grep { $_ eq 'admin' } @{ $_[0]{roles} } }

package MyApp::Stamp;
sub new { my ($class, %fields) = @_; bless {%fields}, $class }
sub STORABLE_freeze {
    my ($self, $cloning) = @_;
    return ("epoch=$self->{epoch}", $self->{zone}, $self->{tags});
}
sub STORABLE_thaw {
    my ($self, $cloning, $frozen, $zone, $tags) = @_;
    ($self->{epoch}) = $frozen =~ /^epoch=(\d+)\z/ or die "bad frozen MyApp::Stamp $frozen";
    $self->{zone} = $zone;
    $self->{tags} = $tags;
    $self->{thawed} = 1;
    return;
}
sub epoch { $_[0]{epoch} }
sub zone_name { $_[0]{zone}->name }

package main;

# The objects `write-objects` stores, and `check-objects` expects back: the zone object is
# shared by the user and the stamp.
sub objects {
    my $zone = MyApp::Zone->new('Europe/Paris');
    return (
        user  => MyApp::User->new(id => 7, name => "zo\x{eb}", roles => ['admin', 'dev'], zone => $zone),
        stamp => MyApp::Stamp->new(epoch => 1700000000, zone => $zone, tags => ['login', 2]),
        plain => bless({ note => 'no hooks' }, 'MyApp::Plain'),
    );
}

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
} elsif ($command eq 'write-objects') {
    my $now = time;
    StoreOnly->store_session_data("expires:$sid" => $now + 7200);
    StoreOnly->store_session_data("session:$sid" => {
        __created => $now,
        __updated => $now,
        count     => 1,
        objects(),
    });
} elsif ($command eq 'check-objects') {
    require Test::More;
    Test::More->import;
    my $session = StoreOnly->get_session_data("session:$sid");
    my %want = objects();
    ok(ref $session eq 'HASH', 'the session thaws');
    for my $key (sort keys %want) {
        is(ref $session->{$key}, ref $want{$key}, "$key keeps its class");
    }
    # STORABLE_thaw ran: it marks the object it rebuilt.
    $want{stamp}{thawed} = 1;
    is_deeply($session->{$_}, $want{$_}, "$_ comes back the same") for sort keys %want;
    is($session->{user}->name, "zo\x{eb}", 'a method of the blessed user');
    ok($session->{user}->is_admin, 'and another');
    is($session->{stamp}->epoch, 1700000000, 'a method of the hook object');
    is($session->{stamp}->zone_name, 'Europe/Paris', 'its referred object is an object');
    ok($session->{user}{zone} == $session->{stamp}{zone}, 'shared by the user and the stamp');
    print "count $session->{count}\n";
    print "rust $session->{rust}\n" if defined $session->{rust};
    done_testing();
} else {
    die "unknown command $command\n";
}
