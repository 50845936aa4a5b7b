#!/usr/bin/perl
# Cache::FastMmap get hits from N forked processes on one cache file, for the README's
# one-and-two-process row (the Rust side is `cargo bench --bench cache`, group get_hit_procs):
# default geometry, 10,000 keys of 10 bytes, 100-byte values, 200,000 gets per process,
# reported as wall time per get across all processes.
#
#   perl benches/compare_perl_procs.pl 1; perl benches/compare_perl_procs.pl 2
use strict; use warnings; use Cache::FastMmap; use Time::HiRes qw(time);
my $procs = shift // 1; my $ops = 200000;
my $f = "/dev/shm/fastmmap-perl-procs-$$.cache"; unlink $f;
my $c = Cache::FastMmap->new(share_file => $f, init_file => 1, serializer => '', unlink_on_exit => 0);
my @k = map { sprintf('k%09d', $_) } 0..9999; my $v = 'x' x 100;
$c->set($_, $v) for @k;
my $t0 = time; my @pids;
for my $p (1..$procs) { my $pid = fork; if (!$pid) { my $c2 = Cache::FastMmap->new(share_file => $f, init_file => 0, serializer => '', unlink_on_exit => 0); my $i = $p * 3331; for (1..$ops) { $c2->get($k[$i++ % 10000]) // die } exit 0 } push @pids, $pid }
waitpid $_, 0 for @pids; my $el = time - $t0;
printf "perl %d procs: %.0f ns per get overall\n", $procs, $el * 1e9 / ($ops * $procs);
unlink $f;
