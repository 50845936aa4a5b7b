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

# Perl objects in the session (a Perl-only route; the Rust demo has none): POST stores a
# DemoApp::Stamp, which freezes itself with Storable hooks and refers to a DemoApp::Zone
# object, and a blessed DemoApp::User; GET shows them as thawed, through their methods.
sub stamp : Local : Args(0) {
    my ($self, $c) = @_;
    my $epoch = $c->req->params->{epoch};
    if (defined $epoch) {
        my $zone = DemoApp::Zone->new('UTC');
        $c->session->{stamp} = DemoApp::Stamp->new(epoch => $epoch, zone => $zone);
        $c->session->{member} = DemoApp::User->new(name => 'dora', zone => $zone);
        return $c->res->redirect('/stamp', 303);
    }
    my $session = live_session($c) || {};
    my ($stamp, $member) = @$session{qw(stamp member)};
    return text($c, 'stamp=') unless ref $stamp;
    text($c, join ' ', 'stamp=' . $stamp->epoch, 'zone=' . $stamp->zone_name,
        'class=' . ref($stamp), 'thawed=' . ($stamp->{thawed} // 0),
        'member=' . $member->name, 'shared=' . ($member->{zone} == $stamp->{zone} ? 1 : 0));
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

package DemoApp::Zone;
sub new { my ($class, $name) = @_; bless { name => $name }, $class }
sub name { $_[0]{name} }

package DemoApp::User;
sub new { my ($class, %fields) = @_; bless {%fields}, $class }
sub name { $_[0]{name} }

# Freezes itself as DateTime does: a string, and references to further values.
package DemoApp::Stamp;
sub new { my ($class, %fields) = @_; bless {%fields}, $class }
sub STORABLE_freeze { my ($self) = @_; return ("epoch=$self->{epoch}", $self->{zone}) }
sub STORABLE_thaw {
    my ($self, $cloning, $frozen, $zone) = @_;
    ($self->{epoch}) = $frozen =~ /^epoch=(\d+)\z/ or die "bad frozen DemoApp::Stamp";
    @$self{qw(zone thawed)} = ($zone, 1);
    return;
}
sub epoch { $_[0]{epoch} }
sub zone_name { $_[0]{zone}->name }

1;
