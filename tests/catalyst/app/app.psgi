# The Catalyst twin of the Rust demo (examples/support/web_app.rs), for tests/catalyst.rs:
#   DEMO_SESSION_FILE=PATH DEMO_COOKIE_NAME=NAME starman --workers 2 -Ilib app.psgi
use strict;
use warnings;
use DemoApp;

DemoApp->psgi_app;
