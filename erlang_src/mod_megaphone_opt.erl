%%%----------------------------------------------------------------------
%%% File    : mod_megaphone_opt.erl
%%% Purpose : Typed accessors of mod_megaphone's options
%%%----------------------------------------------------------------------

%% @doc One accessor per option of mod_megaphone, in the shape of the
%% `mod_*_opt.erl' files ejabberd generates for its own modules (`make
%% options'; out of tree they are written by hand): each takes the validated
%% options map or a host and returns the option's value, typed. Validation
%% and defaults live in `mod_megaphone:mod_opt_type/1' and `mod_options/1'.
-module(mod_megaphone_opt).

-export([access/1]).
-export([balance/1]).
-export([certfile/1]).
-export([ciphers/1]).
-export([connect_retry/1]).
-export([connection_rate_per_ip/1]).
-export([handshake_timeout/1]).
-export([hibernate_after/1]).
-export([listen/1]).
-export([max_connections/1]).
-export([max_connections_per_ip/1]).
-export([max_fsm_queue/1]).
-export([max_handshakes_per_ip/1]).
-export([max_stanza_size/1]).
-export([nodes/1]).
-export([parser/1]).
-export([shaper/1]).
-export([stream_header_timeout/1]).
-export([tls_min_version/1]).

-spec access(gen_mod:opts() | global | binary()) -> 'undefined' | acl:acl().
access(Opts) when is_map(Opts) ->
    gen_mod:get_opt(access, Opts);
access(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, access).

-spec balance(gen_mod:opts() | global | binary()) -> 'round_robin' | 'least_sessions'.
balance(Opts) when is_map(Opts) ->
    gen_mod:get_opt(balance, Opts);
balance(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, balance).

-spec certfile(gen_mod:opts() | global | binary()) -> 'undefined' | binary().
certfile(Opts) when is_map(Opts) ->
    gen_mod:get_opt(certfile, Opts);
certfile(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, certfile).

-spec ciphers(gen_mod:opts() | global | binary()) -> 'undefined' | binary().
ciphers(Opts) when is_map(Opts) ->
    gen_mod:get_opt(ciphers, Opts);
ciphers(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, ciphers).

-spec connect_retry(gen_mod:opts() | global | binary()) -> pos_integer().
connect_retry(Opts) when is_map(Opts) ->
    gen_mod:get_opt(connect_retry, Opts);
connect_retry(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, connect_retry).

-spec connection_rate_per_ip(gen_mod:opts() | global | binary()) -> 'infinity' | {pos_integer(), pos_integer()}.
connection_rate_per_ip(Opts) when is_map(Opts) ->
    gen_mod:get_opt(connection_rate_per_ip, Opts);
connection_rate_per_ip(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, connection_rate_per_ip).

-spec handshake_timeout(gen_mod:opts() | global | binary()) -> 'undefined' | pos_integer().
handshake_timeout(Opts) when is_map(Opts) ->
    gen_mod:get_opt(handshake_timeout, Opts);
handshake_timeout(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, handshake_timeout).

-spec listen(gen_mod:opts() | global | binary()) -> [mod_megaphone:listener()].
listen(Opts) when is_map(Opts) ->
    gen_mod:get_opt(listen, Opts);
listen(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, listen).

-spec max_connections(gen_mod:opts() | global | binary()) -> 'infinity' | pos_integer().
max_connections(Opts) when is_map(Opts) ->
    gen_mod:get_opt(max_connections, Opts);
max_connections(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, max_connections).

-spec max_connections_per_ip(gen_mod:opts() | global | binary()) -> 'infinity' | pos_integer().
max_connections_per_ip(Opts) when is_map(Opts) ->
    gen_mod:get_opt(max_connections_per_ip, Opts);
max_connections_per_ip(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, max_connections_per_ip).

-spec max_fsm_queue(gen_mod:opts() | global | binary()) -> 'undefined' | pos_integer().
max_fsm_queue(Opts) when is_map(Opts) ->
    gen_mod:get_opt(max_fsm_queue, Opts);
max_fsm_queue(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, max_fsm_queue).

-spec max_handshakes_per_ip(gen_mod:opts() | global | binary()) -> 'undefined' | pos_integer().
max_handshakes_per_ip(Opts) when is_map(Opts) ->
    gen_mod:get_opt(max_handshakes_per_ip, Opts);
max_handshakes_per_ip(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, max_handshakes_per_ip).

-spec max_stanza_size(gen_mod:opts() | global | binary()) -> 'undefined' | 'infinity' | pos_integer().
max_stanza_size(Opts) when is_map(Opts) ->
    gen_mod:get_opt(max_stanza_size, Opts);
max_stanza_size(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, max_stanza_size).

-spec nodes(gen_mod:opts() | global | binary()) -> #{node() => #{atom() => term()}}.
nodes(Opts) when is_map(Opts) ->
    gen_mod:get_opt(nodes, Opts);
nodes(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, nodes).

-spec shaper(gen_mod:opts() | global | binary()) -> 'undefined' | atom() | [term()].
shaper(Opts) when is_map(Opts) ->
    gen_mod:get_opt(shaper, Opts);
shaper(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, shaper).

-spec stream_header_timeout(gen_mod:opts() | global | binary()) -> 'infinity' | pos_integer().
stream_header_timeout(Opts) when is_map(Opts) ->
    gen_mod:get_opt(stream_header_timeout, Opts);
stream_header_timeout(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, stream_header_timeout).

-spec tls_min_version(gen_mod:opts() | global | binary()) -> 'undefined' | 'tlsv1.2' | 'tlsv1.3'.
tls_min_version(Opts) when is_map(Opts) ->
    gen_mod:get_opt(tls_min_version, Opts);
tls_min_version(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, tls_min_version).

-spec parser(gen_mod:opts() | global | binary()) -> 'ejabberd' | 'megaphone'.
parser(Opts) when is_map(Opts) ->
    gen_mod:get_opt(parser, Opts);
parser(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, parser).

-spec hibernate_after(gen_mod:opts() | global | binary()) -> 'infinity' | pos_integer().
hibernate_after(Opts) when is_map(Opts) ->
    gen_mod:get_opt(hibernate_after, Opts);
hibernate_after(Host) ->
    gen_mod:get_module_opt(Host, mod_megaphone, hibernate_after).
