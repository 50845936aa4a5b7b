#!/usr/bin/perl
# The Perl half of tests/perl_values.rs: Storable images and Cache::FastMmap values made and
# read by real Perl.
#
#   perl values.pl gen SEED COUNT
#       COUNT random nested structures (srand SEED): for each, one line
#       `sample FREEZE_HEX NFREEZE_HEX DUMP_OF_THAW_FREEZE DUMP_OF_THAW_NFREEZE`.
#   perl values.pl cases
#       Named structures with shared references, cycles, weak references, blessed objects
#       and overloading: `case NAME FREEZE_HEX NFREEZE_HEX DUMP NDUMP` for each.
#   perl values.pl hooks
#       Named structures with objects frozen by STORABLE_freeze hooks (every SX_HOOK form Perl
#       writes): `hook NAME FREEZE_HEX NFREEZE_HEX DUMP NDUMP`, the dumps after STORABLE_thaw.
#   perl values.pl refused
#       `refused NAME FREEZE_HEX` for data the Rust side refuses: a code reference (with
#       $Storable::Deparse), a tied hash, a tied hash with a STORABLE_freeze hook, a regexp, a
#       v-string and a restricted hash.
#   perl values.pl thaw
#       For each line of hex on stdin: thaws it, freezes and nfreezes the result (before
#       dumping, which must not change it) and prints `thawed DUMP FREEZE_HEX NFREEZE_HEX`.
#   perl values.pl cache-write PATH NUM_PAGES PAGE_SIZE SERIALIZER COMPRESSOR
#       Stores the fixed records below in a Cache::FastMmap file (SERIALIZER storable, json
#       or raw; COMPRESSOR none, zlib, lz4 or snappy) and prints `ok`.
#   perl values.pl cache-read PATH NUM_PAGES PAGE_SIZE SERIALIZER COMPRESSOR KEY...
#       Prints `value KEY JSON` for each key: Perl's reading of the value as canonical JSON
#       (sorted keys; JSON::PP::Boolean as 1 and 0), or `missing KEY`.
#
# DUMP is a canonical text of a Perl data structure, printed the same way by the Rust side:
#   u undef   T / F Perl's immortal true / false   iN integer (IV)   nHEX double (NV, its 8
#   bytes big-endian)   bHEX byte string   sHEX character string (its UTF-8)
#   [a,b] array   {KEY=v,...} hash, keys as bHEX / sHEX, sorted   \x reference   \wx weak one
#   <Class>x  a value blessed into Class
#   #N=x  the first of several places holding one value (one SV)   @N  the others
# A missing array element prints as u. Shared values are numbered in order of first visit.

use strict;
use warnings;
no warnings 'recursion';    # deep structures are part of the tests
use B ();
use Storable qw(freeze nfreeze thaw);
use Scalar::Util qw(blessed reftype refaddr weaken isweak);

$| = 1;
alarm(120);

# A class with overloading: Storable writes references to its objects as SX_OVERLOAD.
package Ov {
  use overload '""' => sub { 'Ov' }, 'bool' => sub { 1 }, fallback => 1;
}

# Classes whose objects freeze themselves: Storable writes SX_HOOK.
package Hooked {
  sub STORABLE_freeze { return 'frozen by a hook' }
  sub STORABLE_thaw { my ($self, $cloning, $s) = @_; $self->{s} = $s }
}

# A hash object whose hook returns references to further values (SHF_NEED_RECURSE and the
# object list), itself among them.
package Hooked::Refs {
  sub STORABLE_freeze {
    my ($self) = @_;
    return ("name=$self->{name}", $self->{list}, $self->{meta}, \$self->{count}, $self);
  }
  sub STORABLE_thaw {
    my ($self, $cloning, $s, $list, $meta, $count, $me) = @_;
    ($self->{name}) = $s =~ /^name=(.*)\z/s;
    @$self{qw(list meta count)} = ($list, $meta, $$count);
    $self->{me} = Scalar::Util::refaddr($me) == Scalar::Util::refaddr($self) ? 'self' : 'other';
  }
}

# A blessed array and a blessed scalar.
package Hooked::Array {
  sub STORABLE_freeze { my ($self) = @_; return join(',', @$self) }
  sub STORABLE_thaw { my ($self, $cloning, $s) = @_; @$self = split /,/, $s }
}
package Hooked::Scalar {
  sub STORABLE_freeze { my ($self) = @_; return "s:$$self" }
  sub STORABLE_thaw { my ($self, $cloning, $s) = @_; $$self = substr($s, 2) }
}

# Overloading and a hook: references to it are SX_OVERLOAD.
package Hooked::Ov {
  use overload '""' => sub { 'Hooked::Ov' }, fallback => 1;
  sub STORABLE_freeze { return 'ov' }
  sub STORABLE_thaw { $_[0]{v} = $_[2] }
}

# A long frozen string (SHF_LARGE_STRLEN) and more than 255 references (SHF_LARGE_LISTLEN).
package Hooked::Many {
  sub STORABLE_freeze { my ($self) = @_; return ('m' x 300, map { \$_ } @{ $self->{items} }) }
  sub STORABLE_thaw { my ($self, $cloning, $s, @refs) = @_; $self->{items} = [map { $$_ } @refs]; $self->{s} = length $s }
}

# Subclasses of Hooked for class names and class indexes over 255 (`hooks`, `thaw`).
my $LONG_CLASS = 'H' x 300;
{
  no strict 'refs';
  @{"${LONG_CLASS}::ISA"} = ('Hooked');
  @{"Hooked::C$_\::ISA"} = ('Hooked') for 1 .. 300;
}

my ($command, @args) = @ARGV;
die "usage: values.pl gen|cases|thaw|cache-write|cache-read ...\n" unless defined $command;

# -------------------------------------------------------------------------------------------
# The canonical dump

sub hex_of {
  my ($s) = @_;
  utf8::encode($s) if utf8::is_utf8($s);
  return unpack('H*', $s);
}

sub key_token { my ($k) = @_; return (utf8::is_utf8($k) ? 's' : 'b') . hex_of($k) }

my ($YES, $NO, $UNDEF) = (${ B::sv_yes() }, ${ B::sv_no() }, ${ B::sv_undef() });

# Perl's immortals are not counted or labelled (the Rust side has no identity for them).
sub immortal {
  my ($r) = @_;
  my $addr = ${ B::svref_2object($r) };
  return $addr == $YES ? 'T' : $addr == $NO ? 'F' : $addr == $UNDEF ? 'u' : undef;
}

# Children of the value $r refers to, as references to their SVs, in dump order; undef for a
# missing array element.
sub children {
  my ($r) = @_;
  my $t = reftype($r);
  if ($t eq 'ARRAY') {
    return map { exists $r->[$_] ? \$r->[$_] : undef } 0 .. $#$r;
  }
  if ($t eq 'HASH') {
    return map { \$r->{$_->[1]} } sort { $a->[0] cmp $b->[0] } map { [key_token($_), $_] } keys %$r;
  }
  if ($t eq 'REF') {
    return ($$r);
  }
  return ();
}

sub count_visits {
  my ($r, $count) = @_;
  return if !defined $r || immortal($r);
  return if $count->{ refaddr($r) }++;
  count_visits($_, $count) for children($r);
}

sub scalar_token {
  my ($r) = @_;
  my $copy = $$r;    # tokens are made from copies: stringifying must not change the value
  return 'u' unless defined $copy;
  my $flags = B::svref_2object($r)->FLAGS;
  return (utf8::is_utf8($copy) ? 's' : 'b') . hex_of($copy) if $flags & B::SVf_POK;
  return 'n' . unpack('H16', pack('d>', $copy)) if $flags & B::SVf_NOK;
  return 'i' . $copy if $flags & B::SVf_IOK;
  die "values.pl: a scalar of unknown kind (flags $flags)\n";
}

sub dump_sv {
  my ($r, $st) = @_;
  return 'u' unless defined $r;
  if (defined(my $token = immortal($r))) { return $token }
  my $addr = refaddr($r);
  my $label = '';
  if ($st->{count}{$addr} > 1) {
    return '@' . $st->{label}{$addr} if exists $st->{label}{$addr};
    $st->{label}{$addr} = $st->{next}++;
    $label = '#' . $st->{label}{$addr} . '=';
  }
  my $class = blessed($r);
  my $out = $label . (defined $class ? "<$class>" : '');
  my $t = reftype($r);
  if ($t eq 'ARRAY') {
    return $out . '[' . join(',', map { dump_sv($_, $st) } children($r)) . ']';
  }
  if ($t eq 'HASH') {
    my @keys = sort { $a->[0] cmp $b->[0] } map { [key_token($_), $_] } keys %$r;
    return $out . '{' . join(',', map { $_->[0] . '=' . dump_sv(\$r->{$_->[1]}, $st) } @keys) . '}';
  }
  if ($t eq 'REF') {
    return $out . '\\' . (isweak($$r) ? 'w' : '') . dump_sv($$r, $st);
  }
  if ($t eq 'SCALAR') {
    return $out . scalar_token($r);
  }
  die "values.pl: cannot dump a $t\n";
}

# The dump of the value $root refers to (what thaw returns a reference to).
sub canonical {
  my ($root) = @_;
  my %count;
  count_visits($root, \%count);
  return dump_sv($root, { count => \%count, label => {}, next => 0 });
}

# -------------------------------------------------------------------------------------------
# Random data

sub rnd { int(rand($_[0])) }

sub random_bytes {
  my $n = rnd(10) == 0 ? 256 + rnd(300) : rnd(12);
  return join '', map { chr(rnd(256)) } 1 .. $n;
}

sub random_chars {
  my $n = rnd(10) == 0 ? 100 + rnd(100) : rnd(8);
  my $s = join '', map {
    my $k = rnd(4);
      $k == 0 ? chr(rnd(128))
    : $k == 1 ? chr(rnd(256))
    : $k == 2 ? chr(0x100 + rnd(0xd000))
    : chr(0x1f600 + rnd(80))
  } 1 .. $n;
  utf8::upgrade($s);    # a character string, even when every character is below 256
  return $s;
}

sub random_key {
  my $k = rnd(3) == 0 ? random_chars() : random_bytes();
  return $k;
}

sub random_class {
  my $k = rnd(10);
  return $k == 0 ? 'Foo' : $k == 1 ? 'Bar::Baz' : $k == 2 ? 'L' x 200 : $k == 3 ? 'Ov' : undef;
}

# A random scalar value (to be copied into a container).
sub random_scalar {
  my ($g, $depth) = @_;
  my $k = rnd($depth > 5 || $g->{budget}-- <= 0 ? 6 : 10);
  return undef if $k == 0;
  if ($k == 1) {
    my $j = rnd(4);
    return $j == 0 ? rnd(256) - 128
         : $j == 1 ? rnd(2**31) - 2**30
         : $j == 2 ? (-1) ** rnd(2) * (2**40 + rnd(2**30))
         : (9223372036854775807, -9223372036854775807 - 1, 128, -129, 2**31, -2**31 - 1)[rnd(6)];
  }
  if ($k == 2) {
    my $x = (rand() - 0.5) * 10**(rnd(40) - 20);
    $x += 0.5 if $x == int($x);    # never an integer: Perl would freeze it as one
    return $x;
  }
  return random_bytes() if $k == 3;
  return random_chars() if $k == 4;
  return 'ascii ' . rnd(1000) if $k == 5;
  return random_ref($g, $depth + 1);
}

sub bless_maybe {
  my ($ref) = @_;
  my $class = random_class();
  return defined $class ? bless($ref, $class) : $ref;
}

# A random reference: to a new array, hash or scalar, or to a container made before (shared,
# possibly an ancestor: a cycle; sometimes weak when it is an ancestor, which keeps it alive).
sub random_ref {
  my ($g, $depth, $container) = @_;
  my $k = $container ? 5 : rnd(6);
  if ($k == 0 && @{ $g->{open} }) {
    my $r = $g->{open}[ rnd(scalar @{ $g->{open} }) ];
    return $r;
  }
  if ($k == 1 && @{ $g->{made} }) {
    return $g->{made}[ rnd(scalar @{ $g->{made} }) ];
  }
  if ($k == 2) {
    my $v = random_scalar($g, $depth);
    return bless_maybe(\$v);
  }
  my $r = rnd(2) ? [] : {};
  bless_maybe($r);
  push @{ $g->{open} }, $r;
  my $n = $container ? 3 + rnd(6) : rnd(6);
  for (1 .. $n) {
    my $v = random_scalar($g, $depth);
    if (reftype($r) eq 'ARRAY') { push @$r, $v; next }
    # A key stored again with other UTF-8-ness leaves Perl's hash flagged with no flagged
    # key, which the Rust side writes back unflagged (the same hash to Perl): not here.
    my $key = random_key();
    $r->{$key} = $v unless exists $r->{$key};
  }
  pop @{ $g->{open} };
  push @{ $g->{made} }, $r;
  return $r;
}

# Some elements refer to other elements (aliases), and some references to ancestors weak.
sub random_structure {
  my $g = { open => [], made => [], budget => 150 };
  my $top = random_ref($g, 0, 1);
  if (reftype($top) eq 'ARRAY' && @$top >= 2 && rnd(2)) {
    push @$top, \$top->[0];    # a reference to an element: the element is shared
  }
  if (reftype($top) eq 'HASH' && rnd(2)) {
    $top->{self} = $top;       # a cycle through the root...
    weaken($top->{self}) if rnd(2);    # ...weak, so the root stays strongly held from outside
  }
  return $top;
}

# -------------------------------------------------------------------------------------------
# Commands

sub images {
  my ($data) = @_;
  return (unpack('H*', freeze($data)), unpack('H*', nfreeze($data)));
}

if ($command eq 'gen') {
  my ($seed, $count) = @args;
  srand($seed);
  for (1 .. $count) {
    my $data = random_structure();
    my ($f, $n) = images($data);
    my $d1 = canonical(thaw(pack 'H*', $f));
    my $d2 = canonical(thaw(pack 'H*', $n));
    print "sample $f $n $d1 $d2\n";
  }
  exit 0;
}

if ($command eq 'cases') {
  my %case;
  {
    my $shared = [1, 'two', 3.5];
    $case{shared_array} = { a => $shared, b => $shared, c => [$shared] };
  }
  {
    my $h = { name => 'loop' };
    $h->{self} = $h;
    $case{cycle} = $h;
  }
  {
    my $parent = { name => 'parent', children => [] };
    for my $i (1 .. 3) {
      my $child = { name => "child$i", parent => $parent };
      weaken($child->{parent});
      push @{ $parent->{children} }, $child;
    }
    $case{weak_cycle} = $parent;
  }
  $case{blessed} = [
    bless({ id => 1 }, 'My::User'),
    bless({ id => 2 }, 'My::User'),
    bless([1, 2], 'My::List'),
    bless(\(my $s = 'scalar object'), 'My::Scalar'),
    bless({ id => 3 }, 'My::User'),
    bless({}, 'L' x 300),
  ];
  {
    require JSON::PP;
    $case{overloaded} = { yes => JSON::PP::true(), no => JSON::PP::false(), ov => bless([], 'Ov') };
  }
  {
    my @a = (10, 20);
    $case{aliased_element} = [\$a[0], \@a, \$a[0]];
  }
  {
    my $deep = 'bottom';
    $deep = [$deep] for 1 .. 200;
    $case{deep} = $deep;
  }
  {
    my $latin = "caf\x{e9}";
    my $wide = "\x{263a}smile";
    my $up = "\x{e9}t\x{e9}";
    utf8::upgrade($up);
    $case{keys} = { $latin => 1, $wide => 2, $up => 3, '' => 4, "\0nul" => 5 };
  }
  $case{numbers} = [
    0, -1, 127, -128, 128, -129, 2**31 - 1, -2**31, 2**31, 2**53, 9223372036854775807,
    -9223372036854775807 - 1, 18446744073709551615, 0.1, -2.5e-300, 1e300, 1/3,
    9**9**9, -9**9**9,
  ];
  $case{strings} = [ '', 'x' x 255, 'y' x 256, 'z' x 70000, "\x{263a}" x 100, join('', map chr, 0 .. 255) ];
  $case{scalar_refs} = do { my $x = 5; my $y = \$x; [\$x, \$y, \\$y, \undef] };
  for my $name (sort keys %case) {
    my ($f, $n) = images(\$case{$name});
    my $d1 = canonical(thaw(pack 'H*', $f));
    my $d2 = canonical(thaw(pack 'H*', $n));
    print "case $name $f $n $d1 $d2\n";
  }
  exit 0;
}

if ($command eq 'hooks') {
  my %case;
  $case{simple} = [ bless({}, 'Hooked'), bless({ x => 1 }, 'Hooked'), bless({ id => 1 }, 'My::User') ];
  {
    my $shared = [1, 'two'];
    my $meta = { a => 1, b => [2] };
    my $one = bless({ name => 'one', list => $shared, meta => $meta, count => 5 }, 'Hooked::Refs');
    my $two = bless({ name => 'two', list => [$one], meta => $meta, count => -1 }, 'Hooked::Refs');
    $case{refs} = { before => $shared, one => $one, two => $two, after => $shared, user => bless({}, 'My::User') };
    $case{nested} = [ bless({ name => 'outer', list => [$two, bless({}, 'Hooked')], meta => {}, count => 0 }, 'Hooked::Refs') ];
  }
  $case{kinds} = [ bless([1, 2, 3], 'Hooked::Array'), bless(\(my $s = 'scalar'), 'Hooked::Scalar'), bless({}, 'Hooked::Ov'), bless({}, 'Hooked::Ov') ];
  $case{large} = [ bless({ items => [1 .. 300] }, 'Hooked::Many') ];
  {
    # A class name over 255 bytes, and a class index over 255 (300 classes, then one again).
    my @objects = (bless({}, $LONG_CLASS), map { bless({}, "Hooked::C$_") } 1 .. 300);
    push @objects, bless({}, 'Hooked::C300'), bless({}, $LONG_CLASS);
    $case{classes} = \@objects;
  }
  for my $name (sort keys %case) {
    my ($f, $n) = images(\$case{$name});
    my $d1 = canonical(thaw(pack 'H*', $f));
    my $d2 = canonical(thaw(pack 'H*', $n));
    print "hook $name $f $n $d1 $d2\n";
  }
  exit 0;
}

if ($command eq 'refused') {
  require Tie::Hash;
  require Hash::Util;
  no warnings 'once';
  local $Storable::Deparse = 1;
  my %refused;
  $refused{code} = [ sub { 42 } ];
  tie my %tied, 'Tie::StdHash';
  $refused{tied} = \%tied;
  # A tied hash blessed into a class with a hook (SHT_EXTRA).
  tie my %tied_hook, 'Tie::StdHash';
  $refused{tied_hook} = [ bless(\%tied_hook, 'Hooked') ];
  $refused{regexp} = [ qr/ab+c/i ];
  $refused{vstring} = [ v1.2.3 ];
  my %locked = (a => 1);
  Hash::Util::lock_ref_keys(\%locked);
  $refused{restricted} = \%locked;
  print "refused $_ ", unpack('H*', freeze($refused{$_})), "\n" for sort keys %refused;
  exit 0;
}

if ($command eq 'thaw') {
  while (my $line = <STDIN>) {
    chomp $line;
    my $data = thaw(pack 'H*', $line);
    die "values.pl: thaw failed\n" unless defined $data;
    my ($f, $n) = images($data);
    print "thawed ", canonical($data), " $f $n\n";
  }
  exit 0;
}

# -------------------------------------------------------------------------------------------
# Cache::FastMmap

sub open_cache {
  my ($path, $num_pages, $page_size, $serializer, $compressor) = @_;
  require Cache::FastMmap;
  my $size = -s $path;
  die "values.pl: $path is not $num_pages x $page_size bytes\n"
    unless defined $size && $size == $num_pages * $page_size;
  return Cache::FastMmap->new(
    share_file     => $path,
    num_pages      => $num_pages,
    page_size      => $page_size,
    init_file      => 0,
    unlink_on_exit => 0,
    serializer     => ($serializer eq 'raw' ? '' : $serializer),
    ($compressor ne 'none' ? (compressor => $compressor) : ()),
  );
}

# The records Perl writes; tests/perl_values.rs expects exactly these.
sub records {
  my ($serializer) = @_;
  require JSON::PP;
  if ($serializer eq 'raw') {
    return (plain => 'plain ascii text', number => 42);
  }
  return (
    order => {
      id       => 1042,
      customer => "Zo\x{eb} \x{263a}",
      total    => 31.25,
      paid     => JSON::PP::true(),
      note     => undef,
      lines    => [ { sku => 'A-1', qty => 2, price => 9.5 }, { sku => 'B-22', qty => 1, price => 12.25 } ],
      tags     => { gift => 1, priority => -3 },
    },
    count   => 7,
    ratio   => 0.375,
    name    => "na\x{ef}ve",
    nothing => undef,
    list    => [ 1, 2, 3 ],
  );
}

sub normalise {
  my ($v) = @_;
  return $v ? 1 : 0 if blessed($v) && blessed($v) eq 'JSON::PP::Boolean';
  return [ map { normalise($_) } @$v ] if ref $v eq 'ARRAY';
  return { map { ($_ => normalise($v->{$_})) } keys %$v } if ref $v eq 'HASH';
  return $v;
}

if ($command eq 'cache-write') {
  my ($path, $num_pages, $page_size, $serializer, $compressor) = @args;
  my $cache = open_cache($path, $num_pages, $page_size, $serializer, $compressor);
  my %records = records($serializer);
  for my $key (sort keys %records) {
    $cache->set($key, $records{$key}) or die "values.pl: set $key failed\n";
  }
  print "ok\n";
  exit 0;
}

if ($command eq 'cache-read') {
  my ($path, $num_pages, $page_size, $serializer, $compressor, @keys) = @args;
  my $cache = open_cache($path, $num_pages, $page_size, $serializer, $compressor);
  require JSON::PP;
  my $json = JSON::PP->new->utf8->canonical->allow_nonref;
  for my $key (@keys) {
    my ($found, $value) = (0, undef);
    # get_and_set tells a stored undef from a missing key; returning nothing stores nothing.
    $cache->get_and_set($key, sub { ($found, $value) = (exists $_[2]{expire_on}, $_[1]); return });
    print $found ? "value $key " . $json->encode(normalise($value)) . "\n" : "missing $key\n";
  }
  exit 0;
}

die "values.pl: unknown command $command\n";
