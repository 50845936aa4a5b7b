#!/usr/bin/perl
# The Perl half of benches/compare_perl.sh: Cache::FastMmap's own get/set methods (raw
# values, `serializer => ''`, default geometry) on the workload that examples/compare_perl.rs
# runs through fastmmap. Keep the two workload definitions identical.
#
#   perl benches/compare_perl.pl --file PATH [--keys N] [--ops N] [--runs N]
#
# PATH must not exist: the cache is created fresh. Prints, one per line:
#   geometry NUM_PAGES PAGE_SIZE
#   workload KEYS OPS SEQUENCE_SUM      (the script checks both halves agree)
#   result WORKLOAD BEST_NS_PER_OP MEDIAN_NS_PER_OP

use strict;
use warnings;
use Cache::FastMmap;
use Getopt::Long;
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);

my %opt = (keys => 10_000, ops => 100_000, runs => 5);
GetOptions(\%opt, 'file=s', 'keys=i', 'ops=i', 'runs=i') && $opt{file}
  or die "usage: compare_perl.pl --file PATH [--keys N] [--ops N] [--runs N]\n";
die "compare_perl.pl: $opt{file} exists; give a fresh path\n" if -e $opt{file};
my ($nkeys, $ops, $runs) = @opt{qw(keys ops runs)};

# ---- The workload (the same in examples/compare_perl.rs) -----------------------------------
# Keys: "k" and nine digits (10 bytes); misses: "m" and nine digits, never stored.
# Values: 100 bytes, byte j of key i's value = (31 * i + j) mod 256.
# Operation k uses key index idx[k] from the LCG x = (1103515245 x + 12345) mod 2^31,
# x0 = 1, idx = x mod KEYS. get_half_miss alternates: even k hits, odd k misses.
my @key = map { sprintf('k%09d', $_) } 0 .. $nkeys - 1;
my @miss = map { sprintf('m%09d', $_) } 0 .. $nkeys - 1;
my @value = map { my $i = $_; pack('C*', map { (31 * $i + $_) % 256 } 0 .. 99) } 0 .. $nkeys - 1;
my ($x, $sum, @idx) = (1, 0);
for (1 .. $ops) {
  $x = ($x * 1103515245 + 12345) % 2147483648;
  push @idx, $x % $nkeys;
  $sum += $idx[-1];
}
my @hit_keys = map { $key[$_] } @idx;
my @half_keys = map { $_ % 2 ? $miss[$idx[$_]] : $key[$idx[$_]] } 0 .. $ops - 1;
my @set_vals = map { $value[$_] } @idx;

my $cache = Cache::FastMmap->new(
  share_file     => $opt{file},
  serializer     => '',
  init_file      => 0,
  unlink_on_exit => 0,
);
print "geometry $cache->{num_pages} $cache->{page_size}\n";
print "workload $nkeys $ops $sum\n";
$cache->set($key[$_], $value[$_]) or die "prefill: store refused\n" for 0 .. $nkeys - 1;

# Each returns the number of operations that found (or stored) something.
my %workload = (
  get_hit => sub {
    my $n = 0;
    for my $k (@hit_keys) { $n++ if defined $cache->get($k) }
    $n;
  },
  get_half_miss => sub {
    my $n = 0;
    for my $k (@half_keys) { $n++ if defined $cache->get($k) }
    $n;
  },
  set_overwrite => sub {
    my $n = 0;
    for my $i (0 .. $#hit_keys) { $n++ if $cache->set($hit_keys[$i], $set_vals[$i]) }
    $n;
  },
);
my @order = qw(get_hit get_half_miss set_overwrite);
my %expect = (get_hit => $ops, get_half_miss => int(($ops + 1) / 2), set_overwrite => $ops);

# Warm-up (and a check that the workload does what it says), then the runs, interleaved.
for my $w (@order) {
  my $n = $workload{$w}->();
  die "compare_perl.pl: $w: $n of $ops operations hit, expected $expect{$w}\n"
    if $n != $expect{$w};
}
my %ns;
for (1 .. $runs) {
  for my $w (@order) {
    my $t0 = clock_gettime(CLOCK_MONOTONIC);
    $workload{$w}->();
    my $t1 = clock_gettime(CLOCK_MONOTONIC);
    push @{ $ns{$w} }, ($t1 - $t0) * 1e9 / $ops;
  }
}
for my $w (@order) {
  my @s = sort { $a <=> $b } @{ $ns{$w} };
  printf "result %s %.0f %.0f\n", $w, $s[0], $s[$#s / 2];
}
