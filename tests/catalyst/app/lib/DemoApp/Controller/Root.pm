package DemoApp::Controller::Root;
# The routes of examples/support/web_app.rs, answering with the same bodies.
use strict;
use warnings;
use parent 'Catalyst::Controller';

__PACKAGE__->config(namespace => '');

sub text {
    my ($c, $body) = @_;
    $c->res->content_type('text/plain; charset=utf-8');
    $c->res->body($body);
}

sub html {
    my ($c, $body) = @_;
    $c->res->content_type('text/html; charset=utf-8');
    $c->res->body($body);
}

sub escape {
    my ($s) = @_;
    $s =~ s/&/&amp;/g;
    $s =~ s/</&lt;/g;
    $s =~ s/>/&gt;/g;
    $s =~ s/"/&quot;/g;
    return $s;
}

# The session if the client has a live one; never creates one (as the Rust demo, which
# stores a session only once it holds something).
sub live_session {
    my ($c) = @_;
    return ($c->sessionid && $c->session_is_valid) ? $c->session : undef;
}

sub index : Path : Args(0) {
    my ($self, $c) = @_;
    my $visits = ++$c->session->{visits};
    my $user = escape($c->session->{user} // '');
    html($c, <<"HTML");
<!doctype html>
<html><head><title>fastmmap sessions</title><link rel="stylesheet" href="/static/app.css"></head>
<body>
<p id="state">visits=$visits user=$user</p>
<p><a id="home" href="/">home</a> <a id="count" href="/count">count</a> <a id="whoami" href="/whoami">whoami</a> <a id="show-flash" href="/flash">flash</a></p>
<form id="login" method="post" action="/login"><input name="user" value=""><button>log in</button></form>
<form id="flash" method="post" action="/flash"><input name="msg" value=""><button>flash</button></form>
<form id="logout" method="post" action="/logout"><button>log out</button></form>
</body></html>
HTML
}

sub count : Local : Args(0) {
    my ($self, $c) = @_;
    my $n = ++$c->session->{count};
    html($c, qq{<p>count=$n pid=$$</p><a href="/count">again</a>});
}

sub login : Local : Args(0) {
    my ($self, $c) = @_;
    my $user = $c->req->params->{user};
    unless (defined $user && length $user) {
        return html($c,
            q{<form method="post" action="/login"><input name="user"><button>log in</button></form>});
    }
    $c->change_session_id;
    $c->session->{user} = $user;
    $c->res->redirect('/whoami', 303);
}

sub whoami : Local : Args(0) {
    my ($self, $c) = @_;
    my $session = live_session($c);
    text($c, 'user=' . (($session && $session->{user}) // ''));
}

sub flash : Local : Args(0) {
    my ($self, $c) = @_;
    my $msg = $c->req->params->{msg};
    if (defined $msg) {
        $c->flash->{msg} = $msg;
        return $c->res->redirect('/flash', 303);
    }
    my $shown = live_session($c) ? ($c->flash->{msg} // '') : '';
    text($c, "flash=$shown");
}

sub logout : Local : Args(0) {
    my ($self, $c) = @_;
    $c->delete_session('logout');
    $c->res->redirect('/whoami', 303);
}

sub stylesheet : Path('static/app.css') : Args(0) {
    my ($self, $c) = @_;
    $c->res->content_type('text/css');
    $c->res->body("body { font-family: sans-serif }\n");
}

sub default : Path {
    my ($self, $c) = @_;
    $c->res->status(404);
    text($c, 'not found');
}

sub end : Private {
    my ($self, $c) = @_;
    $c->res->header('X-Worker' => $$);
}

1;
