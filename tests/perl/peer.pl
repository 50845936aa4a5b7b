#!/usr/bin/perl
# The Perl half of tests/compat_perl.rs: Cache::FastMmap (raw values, `serializer => ''`) on
# a cache file that the Rust side uses at the same time.
#
#   perl peer.pl COMMAND PATH NUM_PAGES PAGE_SIZE [NAME=VALUE ...]
#
# Options: create=1 lets Perl create the file (otherwise it must already exist with exactly
# NUM_PAGES * PAGE_SIZE bytes, since Perl deletes and recreates a file of any other size);
# expire_time=SECS and test_file=1 are passed to Cache::FastMmap->new, and so is
# cache_size=SIZE, instead of NUM_PAGES and PAGE_SIZE; the rest are per-command (see below).
#
# Strings cross the pipe as tokens, so that binary and UTF-8 are unambiguous:
#   b:HEX   a byte string (no UTF-8 flag)
#   u:HEX   a character string (UTF-8 flag on) whose UTF-8 encoding is HEX
#   undef   Perl's undef
#
# Commands:
#   ops     reads one operation per line on stdin and answers each on stdout:
#             set KEY VAL EXPIRY   -> set DID_STORE TIME_BEFORE TIME_AFTER
#                                     EXPIRY: default | never | now | +SECS | @UNIX_TIME
#             get KEY              -> get FOUND VAL EXPIRE_ON   (via get_and_set, storing nothing)
#             mset PAGE_KEY KEY VAL -> mset ok
#             mget PAGE_KEY KEY    -> mget VAL
#             remove KEY           -> remove DID_REMOVE
#             clear / purge        -> clear ok / purge ok
#             dump                 -> entry KEY VAL EXPIRE_ON LAST_ACCESS FLAGS ... then `end`
#                                     (every live entry, with its raw flag word)
#   count   increments 8-byte little-endian counters with get_and_set; see count() below.
#   churn   stores, reads and removes self-checking values; see churn() below.
#   verify  checks that every entry and every key of the churn key space reads back intact.
#   open    only opens the cache (with test_file=1: Perl's own check of every page, which
#           re-initialises any page that fails it) and prints `opened`.

use strict;
use warnings;
use Cache::FastMmap;

$| = 1;

my ($command, $path, $num_pages, $page_size, @rest) = @ARGV;
die "usage: peer.pl COMMAND PATH NUM_PAGES PAGE_SIZE [NAME=VALUE ...]\n"
  unless defined $page_size;
my %opt = map { /^([a-z_]+)=(.*)$/s or die "peer.pl: bad option $_\n"; ($1, $2) } @rest;

# Stuck for two minutes means a bug (a lock never released): die rather than hang the tests.
alarm(120);

sub open_cache {
  my $size = -s $path;
  if (!$opt{create}) {
    die "peer.pl: $path does not exist (Perl would create it)\n" unless defined $size;
    die "peer.pl: $path is $size bytes, not $num_pages x $page_size (Perl would delete and recreate it)\n"
      if $size != $num_pages * $page_size;
  }
  return Cache::FastMmap->new(
    share_file     => $path,
    (defined $opt{cache_size}
      ? (cache_size => $opt{cache_size})
      : (num_pages => $num_pages, page_size => $page_size)),
    serializer     => '',
    init_file      => 0,
    unlink_on_exit => 0,
    (defined $opt{expire_time} ? (expire_time => $opt{expire_time}) : ()),
    ($opt{test_file} ? (test_file => 1) : ()),
  );
}

sub from_token {
  my ($t) = @_;
  return undef if $t eq 'undef';
  my ($kind, $hex) = $t =~ /^([bu]):([0-9a-f]*)$/ or die "peer.pl: bad token $t\n";
  my $s = pack('H*', $hex);
  if ($kind eq 'u') {
    utf8::decode($s) or die "peer.pl: token $t is not UTF-8\n";
    utf8::upgrade($s);    # the flag is on even for pure ASCII
  }
  return $s;
}

sub to_token {
  my ($s) = @_;
  return 'undef' unless defined $s;
  if (utf8::is_utf8($s)) {
    utf8::encode($s);
    return 'u:' . unpack('H*', $s);
  }
  return 'b:' . unpack('H*', $s);
}

# Cache::FastMmap 1.57's entry flags (FastMmap.xs).
use constant { FC_UTF8VAL => 1 << 31, FC_UTF8KEY => 1 << 30, FC_UNDEF => 1 << 29 };

sub ops {
  my $c = open_cache();
  while (my $line = <STDIN>) {
    chomp $line;
    my ($op, @a) = split / /, $line;
    if ($op eq 'set') {
      my ($k, $v, $exp) = (from_token($a[0]), from_token($a[1]), $a[2]);
      my @opts =
          $exp eq 'default' ? ()
        : $exp eq 'never'   ? ('never')
        : $exp eq 'now'     ? ('now')
        : $exp =~ /^\+(\d+)$/ ? ($1)
        : $exp =~ /^@(\d+)$/  ? ({ expire_on => $1 })
        : die "peer.pl: bad expiry $exp\n";
      my $before = time;
      my $did = $c->set($k, $v, @opts);
      my $after = time;
      print "set ", ($did ? 1 : 0), " $before $after\n";
    } elsif ($op eq 'get') {
      my $k = from_token($a[0]);
      my ($found, $val, $expire_on) = (0, undef, '-');
      # get_and_set hands over the expiry too; returning nothing stores nothing.
      $c->get_and_set($k, sub {
        if (exists $_[2]{expire_on}) {
          ($found, $val, $expire_on) = (1, $_[1], $_[2]{expire_on});
        }
        return;
      });
      # The plain get must agree.
      my $plain = $c->get($k);
      die "peer.pl: get and get_and_set disagree\n"
        if to_token($plain) ne ($found ? to_token($val) : 'undef');
      print "get $found ", to_token($val), " $expire_on\n";
    } elsif ($op eq 'mset') {
      $c->multi_set(from_token($a[0]), { from_token($a[1]) => from_token($a[2]) });
      print "mset ok\n";
    } elsif ($op eq 'mget') {
      my $k = from_token($a[1]);
      my $h = $c->multi_get(from_token($a[0]), [$k]);
      print "mget ", to_token($h->{$k}), "\n";
    } elsif ($op eq 'remove') {
      print "remove ", ($c->remove(from_token($a[0])) ? 1 : 0), "\n";
    } elsif ($op eq 'clear' || $op eq 'purge') {
      $c->$op();
      print "$op ok\n";
    } elsif ($op eq 'dump') {
      for my $e ($c->get_keys(2)) {
        # get_keys moves the key's UTF-8 flag onto the key string and leaves the rest.
        my $flags = $e->{flags} | (utf8::is_utf8($e->{key}) ? FC_UTF8KEY : 0);
        print join(' ', 'entry', to_token($e->{key}), to_token($e->{value}),
          $e->{expire_on}, $e->{last_access}, $flags), "\n";
      }
      print "end\n";
    } else {
      die "peer.pl: bad op $op\n";
    }
  }
}

# Waits for the go line on stdin, after saying it is ready.
sub gate {
  print "ready\n";
  my $go = <STDIN>;
  die "peer.pl: no go signal\n" unless defined $go && $go eq "go\n";
}

# An 8-byte little-endian counter (absent: 0), as `common::counter_value` reads it.
sub counter {
  my ($v) = @_;
  return 0 unless defined $v;
  die "peer.pl: counter holds " . length($v) . " bytes, not 8\n" unless length($v) == 8;
  return unpack('Q<', $v);
}

# count: keys=HEX,HEX,... (the counters) started=HEX (the start counter) procs=N min=N
# offset=N. Announces itself on the start counter, then increments the counters round-robin
# (from `offset`) until it has seen all `procs` processes start and has done `min`
# increments since; so every process is still running when the last one starts. Prints
# `done N0 N1 ... JUMPS`: increments per counter, and how often a counter had moved since
# this process last wrote it (another process got in between).
sub count {
  my @keys = map { pack('H*', $_) } split /,/, $opt{keys};
  my $started_key = pack('H*', $opt{started});
  my ($procs, $min, $offset) = @opt{qw(procs min offset)};
  my $c = open_cache();
  gate();
  my $incr = sub {
    my ($k) = @_;
    my $seen;
    $c->get_and_set($k, sub { $seen = counter($_[1]); return pack('Q<', $seen + 1) });
    return $seen;
  };
  $incr->($started_key);
  my (@done, %mine);
  my ($jumps, $since_all, $all, $i) = (0, 0, 0, $offset);
  my $deadline = time + 60;
  while ($since_all < $min) {
    if (!$all) {
      $all = counter($c->get($started_key)) >= $procs;
      die "peer.pl: not every process started within 60s\n" if !$all && time > $deadline;
    }
    my $n = $i++ % @keys;
    my $seen = $incr->($keys[$n]);
    $jumps++ if exists $mine{$n} && $mine{$n} != $seen;
    $mine{$n} = $seen + 1;
    $done[$n]++;
    $since_all++ if $all;
  }
  print join(' ', 'done', (map { $_ || 0 } @done[0 .. $#keys]), $jumps), "\n";
}

# Self-checking values, the same scheme as `checked_value` in tests/compat_perl.rs:
#   "KEY|WRITER|SEQ|FILL_LEN|" then FILL_LEN bytes of a 20-byte block repeated, the block
#   made from the FNV-1a hash of that prefix.
sub fnv32 {
  my $h = 0x811c9dc5;
  for my $b (unpack('C*', $_[0])) { $h ^= $b; $h = ($h * 0x01000193) & 0xffffffff; }
  return $h;
}

sub filler {
  my ($prefix, $n) = @_;
  my $h = fnv32($prefix);
  my $block = "\x00\xff"
    . pack('V4', $h, $h ^ 0xa5a5a5a5, (($h >> 16) | ($h << 16)) & 0xffffffff, ~$h & 0xffffffff)
    . "\x00|";
  return substr($block x (int($n / length $block) + 1), 0, $n);
}

sub make_value {
  my ($key, $writer, $seq, $fill) = @_;
  my $prefix = "$key|$writer|$seq|$fill|";
  return $prefix . filler($prefix, $fill);
}

sub check_value {
  my ($key, $v) = @_;
  my ($k, $w, $s, $fill, $body) = split /\|/, $v, 5;
  die "peer.pl: value for $key is malformed: " . unpack('H*', substr($v, 0, 40)) . "\n"
    unless defined $body && defined $fill && $fill =~ /^\d+$/;
  die "peer.pl: value for $key was stored for $k\n" if $k ne $key;
  die "peer.pl: value for $key has a damaged body\n"
    if $body ne filler("$k|$w|$s|$fill|", $fill);
  return $w;
}

sub churn_key { sprintf('c%05d', $_[0]) }

# The keys whose writers sometimes store undef.
sub undef_ok { $_[0] % 10 == 0 }

# churn: seed=N ops=N keys=N max_len=N writer=NAME. After the gate: 60% sets (a tenth of
# them expiring after a second; on undef-ok keys a quarter store undef), 35% gets checked on
# the spot, 5% removes. Prints `done SETS GETS HITS FOREIGN`, FOREIGN being the hits on
# values a Rust writer stored.
sub churn {
  my ($ops, $nkeys, $max_len, $writer) = @opt{qw(ops keys max_len writer)};
  srand($opt{seed});
  my $c = open_cache();
  gate();
  my ($sets, $gets, $hits, $foreign) = (0, 0, 0, 0);
  for my $seq (1 .. $ops) {
    my $i = int(rand($nkeys));
    my $key = churn_key($i);
    my $roll = rand(100);
    if ($roll < 60) {
      my $v = undef_ok($i) && rand(4) < 1 ? undef : make_value($key, $writer, $seq, int(rand($max_len)));
      $c->set($key, $v, rand(10) < 1 ? (1) : ()) or die "peer.pl: set of $key refused\n";
      $sets++;
    } elsif ($roll < 95) {
      $gets++;
      my $v = $c->get($key);
      next unless defined $v;
      $foreign++ if check_value($key, $v) =~ /^rust/;
      $hits++;
    } else {
      $c->remove($key);
    }
  }
  print "done $sets $gets $hits $foreign\n";
}

# verify: keys=N. Every entry must be a churn key with an intact value (or undef where
# allowed), and so must every key of the key space that reads as present. Prints
# `verified ENTRIES HITS`.
sub verify {
  my $c = open_cache();
  my $entries = 0;
  for my $e ($c->get_keys(2)) {
    my ($i) = $e->{key} =~ /^c(\d{5})$/ or die "peer.pl: unexpected key " . to_token($e->{key}) . "\n";
    $entries++;
    if (!defined $e->{value}) {
      die "peer.pl: undef under $e->{key}\n" unless undef_ok($i);
      next;
    }
    check_value($e->{key}, $e->{value});
  }
  my $hits = 0;
  for my $i (0 .. $opt{keys} - 1) {
    my $v = $c->get(churn_key($i));
    next unless defined $v;
    check_value(churn_key($i), $v);
    $hits++;
  }
  print "verified $entries $hits\n";
}

if    ($command eq 'ops')    { ops() }
elsif ($command eq 'count')  { count() }
elsif ($command eq 'churn')  { churn() }
elsif ($command eq 'verify') { verify() }
elsif ($command eq 'open')   { open_cache(); print "opened\n" }
else                         { die "peer.pl: unknown command $command\n" }
