#!/usr/bin/perl
# The Perl half of the write-back tests in tests/compat_perl.rs: Cache::FastMmap in
# `write_action => 'write_back'` mode (raw values) on a file the Rust side shares.
#
#   perl write_back.pl COMMAND PATH NUM_PAGES PAGE_SIZE
#
# Keys and values cross the pipe as hex. Every call of the write callback prints
# `wb HEXKEY HEXVALUE`.
#   set     reads `HEXKEY HEXVALUE` lines on stdin and sets each (dirty in the file), then
#           exits without writing anything back; prints `done`.
#   empty   calls empty() (writes back every dirty entry, drops everything); prints `done`.

use strict;
use warnings;
use Cache::FastMmap;

$| = 1;
alarm(120);

my ($command, $path, $num_pages, $page_size) = @ARGV;
die "usage: write_back.pl COMMAND PATH NUM_PAGES PAGE_SIZE\n" unless defined $page_size;
my $size = -s $path;
die "write_back.pl: $path is not $num_pages x $page_size bytes\n"
  unless defined $size && $size == $num_pages * $page_size;

my $cache = Cache::FastMmap->new(
  share_file     => $path,
  num_pages      => $num_pages,
  page_size      => $page_size,
  serializer     => '',
  init_file      => 0,
  unlink_on_exit => 0,
  empty_on_exit  => 0,
  write_action   => 'write_back',
  write_cb       => sub { print "wb ", unpack('H*', $_[1]), " ", unpack('H*', $_[2] // ''), "\n" },
  delete_cb      => sub { print "del ", unpack('H*', $_[1]), "\n" },
);

if ($command eq 'set') {
  while (my $line = <STDIN>) {
    chomp $line;
    my ($k, $v) = map { pack('H*', $_) } split / /, $line;
    $cache->set($k, $v) or die "write_back.pl: set refused\n";
  }
} elsif ($command eq 'empty') {
  $cache->empty();
} else {
  die "write_back.pl: unknown command $command\n";
}
print "done\n";
