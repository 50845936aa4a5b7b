package DemoApp;
# A Catalyst application with the routes of the Rust demo, keeping its sessions with
# Catalyst::Plugin::Session, Session::Store::FastMmap (its defaults: a Cache::FastMmap of
# 89 pages of 64 KiB, Storable values) and Session::State::Cookie.
use strict;
use warnings;

use Catalyst qw/Session Session::Store::FastMmap Session::State::Cookie/;

die "DEMO_SESSION_FILE is not set\n" unless $ENV{DEMO_SESSION_FILE};

__PACKAGE__->config(
    name => 'DemoApp',
    disable_component_resolution_regex_fallback => 1,
    'Plugin::Session' => {
        storage     => $ENV{DEMO_SESSION_FILE},
        cookie_name => $ENV{DEMO_COOKIE_NAME} || 'demoapp_session',
    },
);

__PACKAGE__->setup;

1;
