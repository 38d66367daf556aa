%%%----------------------------------------------------------------------
%%% File    : mod_megaphone.erl
%%% Purpose : Turn connections held by Megaphone nodes into ejabberd_c2s sessions
%%%----------------------------------------------------------------------

%% @doc ejabberd module that attaches Megaphone nodes to this ejabberd node.
%%
%% Its gen_server (registered as `mod_megaphone') connects to every
%% configured Megaphone node, retrying every `connect_retry', and sends it
%% `start' with that node's listeners. For each `megaphone_connect' it starts
%% an `ejabberd_c2s' session over {@link megaphone_socket}, the way WebSocket
%% and BOSH start theirs, passing the client's real address as
%% `sock_peer_name'. In raw-bytes mode nothing in ejabberd watches the
%% socket, so the gen_server does: a session that dies gets its connection
%% closed on the Megaphone node, and a Megaphone node that goes down gets
%% `{tcp_closed, ConnId}' sent to each of its sessions.
%%
%% With `parser: megaphone' the Megaphone node parses each client's XML and
%% the session gets elements, keeping no parser of its own (see
%% megaphone_socket); the module's `c2s_handle_recv' hook, run inside each
%% session for every element it handles, gives the node credit for more.
%%
%% Megaphone nodes serve every virtual host (the client names the host in
%% its stream header), so there is one gen_server per ejabberd node, started
%% by the first host that loads the module, with that host's options.
-module(mod_megaphone).

-behaviour(gen_mod).
-behaviour(gen_server).

-include("logger.hrl").

%% API.
-export([status/0]).

%% Hooks.
-export([c2s_handle_recv/3]).
-export([c2s_handle_info/2]).
-export([stopping/0]).

%% gen_mod callbacks.
-export([start/2]).
-export([stop/1]).
-export([reload/3]).
-export([depends/2]).
-export([mod_options/1]).
-export([mod_opt_type/1]).
-export([mod_doc/0]).

%% gen_server callbacks.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).
-export([code_change/3]).

-export_type([listener/0]).

-type node_status() :: megaphone_status:node_status().
-type listener() :: {tcp | starttls | tls, inet:ip_address(), inet:port_number()}.

-record(mp_node,
        {name                 :: node(),
         listeners = []       :: [listener()],
         max_connections      :: pos_integer() | infinity,
         %% The per-node limits at the edge, as `start' options.
         limits = []          :: [{atom(), term()}],
         status = connecting  :: node_status(),
         start_ref            :: reference() | undefined,
         %% Whether a monitor_node/2 is on. Monitors stack: one per
         %% connection of the link, or a lost node runs node_down once per
         %% start that ever failed.
         monitored = false    :: boolean(),
         sessions = 0         :: non_neg_integer()}).

-record(state,
        {host                 :: binary(),
         opts                 :: gen_mod:opts(),
         nodes = #{}          :: #{node() => #mp_node{}},
         %% ConnId -> {C2SPid, MonitorRef}. A ConnId is a reference minted by
         %% its Megaphone node: it names the node (node(ConnId)) and no other
         %% connection, on any node or run of a node, has it.
         sessions = #{}       :: #{megaphone:conn_id() => {pid(), reference()}},
         %% MonitorRef -> ConnId
         monitors = #{}       :: #{reference() => megaphone:conn_id()}}).

%% How long the Megaphone node may take to answer `start'.
-define(START_TIMEOUT, 10000).

%% The limits at the edge that can be set per node, with the module-level
%% option as the default.
-define(NODE_LIMITS, [{max_connections_per_ip, fun mod_megaphone_opt:max_connections_per_ip/1},
                      {connection_rate_per_ip, fun mod_megaphone_opt:connection_rate_per_ip/1},
                      {stream_header_timeout, fun mod_megaphone_opt:stream_header_timeout/1}]).

%%====================================================================
%% API
%%====================================================================

%% Each configured Megaphone node with its state and counters (see
%% megaphone_status:status/0); kept here for `ejabberdctl debug' users.
-spec status() -> [megaphone_status:node_info()].
status() ->
    megaphone_status:status().

%%====================================================================
%% gen_mod callbacks
%%====================================================================

-spec start(binary(), gen_mod:opts()) -> ok | {ok, pid()} | {error, term()}.
start(Host, Opts) ->
    ejabberd_commands:register_commands(?MODULE, megaphone_status:commands()),
    %% First of the chain: a hook that stops the fold before ours would
    %% leave the node waiting for credit.
    ejabberd_hooks:add(c2s_handle_recv, Host, ?MODULE, c2s_handle_recv, 1),
    %% Before ejabberd_c2s's own (100), which logs what it does not know.
    ejabberd_hooks:add(c2s_handle_info, Host, ?MODULE, c2s_handle_info, 50),
    %% Global: one per node, however many hosts load the module.
    ejabberd_hooks:add(ejabberd_stopping, ?MODULE, stopping, 50),
    case gen_mod:start_child(?MODULE, Host, Opts, ?MODULE) of
        {ok, Pid} -> {ok, Pid};
        {error, {already_started, _}} ->
            ?INFO_MSG("mod_megaphone already runs for another host; ~ts shares it", [Host]),
            ok;
        {error, _} = Err -> Err
    end.

-spec stop(binary()) -> ok.
stop(Host) ->
    ejabberd_hooks:delete(c2s_handle_recv, Host, ?MODULE, c2s_handle_recv, 1),
    ejabberd_hooks:delete(c2s_handle_info, Host, ?MODULE, c2s_handle_info, 50),
    case gen_mod:is_loaded_elsewhere(Host, ?MODULE) of
        true ->
            ok;
        false ->
            ejabberd_commands:unregister_commands(megaphone_status:commands()),
            ejabberd_hooks:delete(ejabberd_stopping, ?MODULE, stopping, 50),
            _ = gen_mod:stop_child(?MODULE),
            ok
    end.

-spec reload(binary(), gen_mod:opts(), gen_mod:opts()) -> ok.
reload(_Host, NewOpts, _OldOpts) ->
    gen_server:cast(?MODULE, {reload, NewOpts}).

-spec depends(binary(), gen_mod:opts()) -> [{module(), hard | soft}].
depends(_Host, _Opts) ->
    [].

mod_opt_type(nodes) ->
    econf:map(
      econf:atom(),
      econf:options(
        #{listen => listen_validator(),
          max_connections => econf:pos_int(infinity),
          max_connections_per_ip => econf:pos_int(infinity),
          connection_rate_per_ip => rate_validator(),
          stream_header_timeout => econf:timeout(second, infinity)},
        [{return, map}, unique]),
      [{return, map}]);
mod_opt_type(listen) ->
    listen_validator();
mod_opt_type(max_connections) ->
    econf:pos_int(infinity);
mod_opt_type(max_connections_per_ip) ->
    econf:pos_int(infinity);
mod_opt_type(connection_rate_per_ip) ->
    rate_validator();
mod_opt_type(stream_header_timeout) ->
    econf:timeout(second, infinity);
mod_opt_type(access) ->
    econf:acl();
mod_opt_type(shaper) ->
    econf:shaper();
mod_opt_type(max_stanza_size) ->
    econf:pos_int(infinity);
mod_opt_type(max_fsm_queue) ->
    econf:pos_int();
mod_opt_type(connect_retry) ->
    econf:timeout(second);
mod_opt_type(certfile) ->
    econf:binary();
mod_opt_type(ciphers) ->
    econf:binary();
mod_opt_type(tls_min_version) ->
    econf:enum(['tlsv1.2', 'tlsv1.3']);
mod_opt_type(handshake_timeout) ->
    econf:timeout(second);
mod_opt_type(max_handshakes_per_ip) ->
    econf:pos_int();
mod_opt_type(parser) ->
    econf:enum([megaphone, ejabberd]);
mod_opt_type(hibernate_after) ->
    econf:timeout(second, infinity);
mod_opt_type(balance) ->
    econf:enum([least_sessions, round_robin]).

mod_options(_Host) ->
    [{nodes, #{}},
     {listen, []},
     {max_connections, infinity},
     {max_connections_per_ip, 1000},
     {connection_rate_per_ip, infinity},
     {stream_header_timeout, timer:seconds(10)},
     {access, undefined},
     {shaper, undefined},
     {max_stanza_size, undefined},
     {max_fsm_queue, undefined},
     {connect_retry, timer:seconds(5)},
     {certfile, undefined},
     {ciphers, undefined},
     {tls_min_version, undefined},
     {handshake_timeout, undefined},
     {max_handshakes_per_ip, undefined},
     {parser, megaphone},
     {hibernate_after, timer:seconds(10)},
     {balance, least_sessions}].

mod_doc() ->
    #{desc =>
          ["Attaches Megaphone nodes to this ejabberd node. A Megaphone node is "
           "a hidden Erlang node (a Swift program) that holds client sockets and "
           "forwards their bytes over Erlang distribution; every client that "
           "connects to it becomes an ordinary c2s session here. Start the "
           "Megaphone node with the same cookie and the same naming mode "
           "(short names: --host localhost for an ejabberd node named "
           "ejabberd@localhost)."],
      opts =>
          [{nodes,
            #{value => "{Node: Options}",
              desc =>
                  ["The Megaphone nodes to attach, each with its own 'listen', "
                   "'max_connections', 'max_connections_per_ip', "
                   "'connection_rate_per_ip' and 'stream_header_timeout'; where a "
                   "node leaves one out, the module-level option applies."]}},
           {listen,
            #{value => "[Listener]",
              desc =>
                  ["Default listeners: a list of '{transport: tcp | starttls | tls, "
                   "ip: IP, port: Port}'. 'transport' defaults to 'tcp', 'ip' to "
                   "'0.0.0.0'. 'starttls' is the port-5222 way (the Megaphone node "
                   "runs STARTTLS itself before it hands the session over), 'tls' "
                   "is XEP-0368 direct TLS; both need 'certfile'."]}},
           {max_connections,
            #{value => "pos_integer() | infinity",
              desc => ["Most client connections one Megaphone node holds."]}},
           {max_connections_per_ip,
            #{value => "pos_integer() | infinity",
              desc => ["Most open connections one client address (an IPv4 address, "
                       "or an IPv6 /64) may have on one Megaphone node; more are "
                       "closed at once. The default is 1000: generous, because "
                       "carrier-grade NAT puts many users behind one address."]}},
           {connection_rate_per_ip,
            #{value => "{count: N, period: timeout()} | infinity",
              desc => ["New connections one client address may open per period on "
                       "one Megaphone node (a token bucket: N at once, then N per "
                       "period); more are closed at once. The default is 'infinity'."]}},
           {stream_header_timeout,
            #{value => "timeout()",
              desc => ["How long a client may take, once connected (after TLS, "
                       "if any), to send a complete stream header; then it gets a "
                       "'connection-timeout' stream error and is closed. ejabberd's "
                       "'negotiation_timeout' (30 seconds) still bounds the whole "
                       "login. The default is 10 seconds."]}},
           {access,
            #{value => "AccessName",
              desc => ["As the c2s listener option; by default that of the first "
                       "ejabberd_c2s listener, as WebSocket and BOSH do."]}},
           {shaper,
            #{value => "ShaperName",
              desc => ["As the c2s listener option; by default that of the first "
                       "ejabberd_c2s listener."]}},
           {max_stanza_size,
            #{value => "Size",
              desc => ["As the c2s listener option; by default that of the first "
                       "ejabberd_c2s listener."]}},
           {parser,
            #{value => "megaphone | ejabberd",
              desc => ["Who parses the clients' XML. 'megaphone': the Megaphone "
                       "node parses each stream and sends the session elements, so "
                       "a session keeps no XML parser (about 12 KB each) and "
                       "malformed or restricted XML is refused at the edge with the "
                       "stream errors ejabberd sends. 'ejabberd': the node forwards "
                       "raw bytes and each session parses them, as on ejabberd's "
                       "own listener. The default is 'megaphone'."]}},
           {hibernate_after,
            #{value => "timeout()",
              desc => ["How long a client may move no byte, either way, before its "
                       "session hibernates (shrinks to its live data until the next "
                       "message). The Megaphone node sees the traffic and tells the "
                       "session, which then hibernates between this and twice this "
                       "after its last byte. 'infinity' turns it off. The default is "
                       "10 seconds."]}},
           {balance,
            #{value => "least_sessions | round_robin",
              desc => ["In a cluster every ejabberd node attaches the same Megaphone "
                       "nodes, and each new client goes to one of them: "
                       "'least_sessions' to the ejabberd node that holds the fewest of "
                       "that Megaphone node's clients (ties in turn), 'round_robin' to "
                       "each in turn. Every node of the cluster must set the same value "
                       "(as for every other option the Megaphone node gets): a node "
                       "that asks for another configuration is refused and logs why. "
                       "The default is 'least_sessions': an ejabberd node that "
                       "restarted gets the new logins until it holds its share."]}},
           {max_fsm_queue,
            #{value => "Size",
              desc => ["As the c2s listener option; by default the global one."]}},
           {connect_retry,
            #{value => "timeout()",
              desc => ["How long to wait before trying an unreachable Megaphone "
                       "node again. The default is 5 seconds."]}},
           {certfile,
            #{value => "Path",
              desc => ["PEM file with the certificate chain and the private key "
                       "(as in ejabberd's 'certfiles'), for 'starttls' and 'tls' "
                       "listeners. The Megaphone node reads it, so it must be readable "
                       "there; it is read again on every reload and on SIGHUP to the node."]}},
           {ciphers,
            #{value => "OpenSSL cipher list",
              desc => ["Ciphers for TLS 1.2. The default excludes everything weaker "
                       "than HIGH, and SHA-1, CAMELLIA and ARIA suites."]}},
           {tls_min_version,
            #{value => "tlsv1.2 | tlsv1.3",
              desc => ["The oldest TLS version accepted; 1.0 and 1.1 never are. "
                       "The default is 'tlsv1.2'."]}},
           {handshake_timeout,
            #{value => "timeout()",
              desc => ["How long a client may take from connecting to a finished "
                       "STARTTLS or TLS handshake. The default is 10 seconds."]}},
           {max_handshakes_per_ip,
            #{value => "pos_integer()",
              desc => ["Unfinished handshakes one client address may have at once; "
                       "more connections from it are closed. The default is 100."]}}],
      example =>
          ["modules:",
           "  mod_megaphone:",
           "    nodes:",
           "      megaphone@localhost:",
           "        listen:",
           "          - port: 5222",
           "            ip: 0.0.0.0",
           "    connect_retry: 2"]}.

%%====================================================================
%% gen_server callbacks
%%====================================================================

init([Host, Opts]) ->
    process_flag(trap_exit, true),
    State = configure(Opts, #state{host = Host, opts = Opts}),
    {ok, State}.

handle_call(nodes, _From, #state{nodes = Nodes} = State) ->
    Reply = [{Name, Status, Sessions}
             || #mp_node{name = Name, status = Status, sessions = Sessions} <- maps:values(Nodes)],
    {reply, lists:sort(Reply), State};
handle_call(detach_all, _From, #state{nodes = Nodes} = State) ->
    {reply, ok, maps:fold(fun detach/3, State, Nodes)};
handle_call(Request, From, State) ->
    ?WARNING_MSG("Unexpected call from ~p: ~p", [From, Request]),
    {noreply, State}.

handle_cast({reload, NewOpts}, State) ->
    {noreply, configure(NewOpts, State#state{opts = NewOpts})};
handle_cast(Msg, State) ->
    ?WARNING_MSG("Unexpected cast: ~p", [Msg]),
    {noreply, State}.

handle_info({connect, Node}, State) ->
    {noreply, connect(Node, State)};
handle_info({connect_result, Node, true}, State) ->
    {noreply, connected(Node, State)};
handle_info({connect_result, Node, false}, State) ->
    {noreply, retry_later(Node, State)};
handle_info({megaphone_started, Ref, Info}, State) ->
    {noreply, started(Ref, Info, State)};
handle_info({megaphone_error, Ref, Reason}, State) when is_reference(Ref) ->
    {noreply, start_failed(Ref, Reason, State)};
handle_info({start_timeout, Node, Ref}, State) ->
    {noreply, start_timed_out(Node, Ref, State)};
handle_info({megaphone_connect, NodePid, ConnId, Peer, Local, Transport}, State)
  when is_pid(NodePid), is_reference(ConnId) ->
    {noreply, start_session(NodePid, ConnId, Peer, Local, Transport, State)};
handle_info({tcp_closed, ConnId} = Msg, State) ->
    %% The client left before its session asked for data: pass it on.
    forward(ConnId, Msg, State),
    {noreply, State};
handle_info({tcp_error, ConnId, _} = Msg, State) ->
    forward(ConnId, Msg, State),
    {noreply, State};
handle_info({'DOWN', MRef, process, _Pid, _Reason}, State) ->
    {noreply, session_down(MRef, State)};
handle_info({nodedown, Node}, State) ->
    {noreply, node_down(Node, State)};
handle_info(Info, State) ->
    ?WARNING_MSG("Unexpected info: ~p", [Info]),
    {noreply, State}.

terminate(_Reason, #state{nodes = Nodes, sessions = Sessions}) ->
    %% The module is going away: close the listeners (an empty `start'
    %% leaves the Megaphone node running) and the sessions it started.
    maps:foreach(
      fun(Node, #mp_node{status = started}) ->
              _ = megaphone:start_async(Node, [{listen, []}], [noconnect]);
         (_, _) ->
              ok
      end, Nodes),
    maps:foreach(fun(_, {Pid, _}) -> ejabberd_c2s:close(Pid) end, Sessions).

code_change(_OldVsn, State, _Extra) ->
    {ok, State}.

%%====================================================================
%% Internal functions
%%====================================================================

%% `{count: N, period: Seconds}' -> `{N, Milliseconds}', as `start' takes it.
rate_validator() ->
    econf:either(
      econf:enum([infinity]),
      econf:and_then(
        econf:options(#{count => econf:pos_int(), period => econf:timeout(second)},
                      [{required, [count, period]}, {return, map}, unique]),
        fun(#{count := N, period := P}) -> {N, P} end)).

listen_validator() ->
    econf:list(
      econf:and_then(
        econf:options(
          #{transport => econf:enum([tcp, starttls, tls]),
            ip => econf:ip(),
            port => econf:port()},
          [{required, [port]}, {return, map}, unique]),
        fun(L) ->
                {maps:get(transport, L, tcp), maps:get(ip, L, {0, 0, 0, 0}), maps:get(port, L)}
        end)).

%% Brings the node table in line with Opts: new nodes are connected, nodes
%% whose listeners changed are sent `start' again, removed nodes lose their
%% listeners and sessions.
-spec configure(gen_mod:opts(), #state{}) -> #state{}.
configure(Opts, #state{nodes = Old} = State) ->
    Wanted = maps:map(
               fun(Name, NodeOpts) ->
                       #mp_node{name = Name,
                                listeners = maps:get(listen, NodeOpts, mod_megaphone_opt:listen(Opts)),
                                max_connections = maps:get(max_connections, NodeOpts,
                                                           mod_megaphone_opt:max_connections(Opts)),
                                limits = [{L, maps:get(L, NodeOpts, Default(Opts))}
                                          || {L, Default} <- ?NODE_LIMITS]}
               end, mod_megaphone_opt:nodes(Opts)),
    case maps:size(Wanted) of
        0 -> ?WARNING_MSG("mod_megaphone has no nodes to attach: set its 'nodes' option", []);
        _ -> ok
    end,
    State1 = maps:fold(
               fun(Name, _, S) when is_map_key(Name, Wanted) -> S;
                  (Name, Node, S) -> detach(Name, Node, S)
               end, State, Old),
    maps:fold(
      fun(Name, New, #state{nodes = Nodes} = S) ->
              case maps:find(Name, Nodes) of
                  {ok, #mp_node{status = started} = Cur} ->
                      send_start(Name, S#state{nodes = Nodes#{Name => keep_runtime(Cur, New)}});
                  {ok, Cur} ->
                      S#state{nodes = Nodes#{Name => keep_runtime(Cur, New)}};
                  error ->
                      self() ! {connect, Name},
                      S#state{nodes = Nodes#{Name => New}}
              end
      end, State1, Wanted).

keep_runtime(#mp_node{status = Status, start_ref = Ref, sessions = Sessions}, New) ->
    New#mp_node{status = Status, start_ref = Ref, sessions = Sessions}.

detach(Name, #mp_node{status = Status, monitored = Monitored},
       #state{nodes = Nodes, sessions = Sessions} = State) ->
    ?INFO_MSG("Detaching Megaphone node ~ts", [Name]),
    case Status of
        started ->
            _ = megaphone:start_async(Name, [{listen, []}], [noconnect]);
        _ ->
            ok
    end,
    maps:foreach(fun(ConnId, {Pid, _}) when node(ConnId) == Name -> ejabberd_c2s:close(Pid);
                    (_, _) -> ok
                 end, Sessions),
    case Monitored of
        true -> erlang:monitor_node(Name, false);
        false -> ok
    end,
    State#state{nodes = maps:remove(Name, Nodes)}.

%% Every session's get_data and send_data travels on the one distribution
%% connection to the node. With delay_send the emulator gathers what its
%% schedulers queued in one round into one write, so the node reads (and wakes
%% for) many messages at a time. Only this connection is changed; a dist
%% module that is not inet-based is left as it is.
-spec coalesce_dist_output(node()) -> ok.
coalesce_dist_output(Node) ->
    case lists:keyfind(Node, 1, erlang:system_info(dist_ctrl)) of
        {Node, Port} when is_port(Port) ->
            case inet:setopts(Port, [{delay_send, true}]) of
                ok -> ok;
                {error, Reason} ->
                    ?WARNING_MSG("Cannot set delay_send on the connection to ~s: ~p",
                                 [Node, Reason])
            end;
        _ ->
            ok
    end.

%% net_kernel:connect_node/1 can block for net_setuptime on a host that does
%% not answer: run it aside so that sessions keep being served meanwhile.
-spec connect(node(), #state{}) -> #state{}.
connect(Node, #state{nodes = Nodes} = State) ->
    case maps:find(Node, Nodes) of
        {ok, #mp_node{status = connecting}} ->
            Self = self(),
            spawn(fun() -> Self ! {connect_result, Node, net_kernel:connect_node(Node)} end),
            State;
        _ ->
            State
    end.

-spec retry_later(node(), #state{}) -> #state{}.
retry_later(Node, #state{opts = Opts, nodes = Nodes} = State) ->
    case maps:find(Node, Nodes) of
        {ok, MP} ->
            ?DEBUG("Megaphone node ~ts not reachable; retrying", [Node]),
            erlang:send_after(mod_megaphone_opt:connect_retry(Opts), self(), {connect, Node}),
            State#state{nodes = Nodes#{Node => MP#mp_node{status = connecting, start_ref = undefined}}};
        error ->
            State
    end.

%% The link to Node is up: watch it (once per link) and send `start'.
%% A result for a node that is not waiting for one (a second connect that
%% raced the first) changes nothing.
-spec connected(node(), #state{}) -> #state{}.
connected(Node, #state{nodes = Nodes} = State) ->
    case maps:find(Node, Nodes) of
        {ok, #mp_node{status = connecting, monitored = Monitored} = MP} ->
            Monitored orelse erlang:monitor_node(Node, true),
            coalesce_dist_output(Node),
            send_start(Node, State#state{nodes = Nodes#{Node => MP#mp_node{monitored = true}}});
        _ ->
            State
    end.

-spec send_start(node(), #state{}) -> #state{}.
send_start(Node, #state{nodes = Nodes} = State) ->
    case maps:find(Node, Nodes) of
        {ok, #mp_node{listeners = Listeners, max_connections = Max, limits = Limits} = MP} ->
            Opts = [{listen, Listeners}, {max_connections, Max}, {controller, self()}
                    | Limits ++ tls_options(State#state.opts) ++ parser_options(State#state.opts)
                    ++ [{hibernate_after, mod_megaphone_opt:hibernate_after(State#state.opts)},
                        {balance, mod_megaphone_opt:balance(State#state.opts)}]],
            %% The reply comes as megaphone_started or megaphone_error with
            %% Ref; a link that dropped meanwhile comes as nodedown.
            case megaphone:start_async(Node, Opts, [noconnect]) of
                {ok, Ref} ->
                    erlang:send_after(?START_TIMEOUT, self(), {start_timeout, Node, Ref}),
                    State#state{nodes = Nodes#{Node => MP#mp_node{status = starting, start_ref = Ref}}};
                {error, nodedown} ->
                    retry_later(Node, State)
            end;
        error ->
            State
    end.

started(Ref, Info, #state{nodes = Nodes} = State) ->
    case find_by_ref(Ref, Nodes) of
        {ok, #mp_node{name = Name} = MP} ->
            ?INFO_MSG("Megaphone node ~ts started: listening on ~p",
                      [Name, maps:get(listeners, Info, [])]),
            State#state{nodes = Nodes#{Name => MP#mp_node{status = started}}};
        error ->
            State
    end.

start_failed(Ref, Reason, #state{nodes = Nodes} = State) ->
    case find_by_ref(Ref, Nodes) of
        {ok, #mp_node{name = Name}} ->
            case Reason of
                {config_mismatch, Names} ->
                    %% Another ejabberd node of the cluster attached it first,
                    %% with other options: the node keeps theirs until every
                    %% attached ejabberd node asks for the same new ones.
                    ?ERROR_MSG("Megaphone node ~ts serves other ejabberd nodes with another "
                               "configuration (these options differ: ~p); set the same "
                               "mod_megaphone options on every node of the cluster (a change "
                               "takes effect once every attached node has reloaded it)",
                               [Name, Names]);
                _ ->
                    ?ERROR_MSG("Megaphone node ~ts refused to start: ~p", [Name, Reason])
            end,
            retry_later(Name, State);
        error ->
            State
    end.

start_timed_out(Node, Ref, #state{nodes = Nodes} = State) ->
    case maps:find(Node, Nodes) of
        {ok, #mp_node{status = starting, start_ref = Ref}} ->
            ?WARNING_MSG("Megaphone node ~ts did not answer start; retrying", [Node]),
            retry_later(Node, State);
        _ ->
            State
    end.

find_by_ref(Ref, Nodes) ->
    case [MP || #mp_node{start_ref = R} = MP <- maps:values(Nodes), R == Ref] of
        [MP] -> {ok, MP};
        [] -> error
    end.

%% Starts an ejabberd_c2s session for a connection, as ejabberd_http_ws does
%% for a WebSocket. The session asks for data itself (setopts on accept), so
%% nothing reaches it before it is ready for it.
-spec start_session(pid(), megaphone:conn_id(), {inet:ip_address(), inet:port_number()},
                    {inet:ip_address(), inet:port_number()}, tcp | tls, #state{}) -> #state{}.
start_session(NodePid, ConnId, Peer, Local, Transport, #state{nodes = Nodes} = State) ->
    Node = node(NodePid),
    case maps:find(Node, Nodes) of
        {ok, #mp_node{sessions = N} = MP} ->
            Socket = case mod_megaphone_opt:parser(State#state.opts) of
                         megaphone -> {megaphone, Node, ConnId, Transport, NodePid};
                         ejabberd -> {megaphone, Node, ConnId, Transport}
                     end,
            Opts = [{sock_peer_name, {Local, Peer}} | c2s_options(State#state.opts)],
            case megaphone_c2s:start(megaphone_socket, Socket, Opts) of
                {ok, Pid} ->
                    ejabberd_c2s:accept(Pid),
                    MRef = erlang:monitor(process, Pid),
                    ?DEBUG("Megaphone connection ~p from ~ts: session ~p", [ConnId, Node, Pid]),
                    State#state{nodes = Nodes#{Node => MP#mp_node{sessions = N + 1}},
                                sessions = (State#state.sessions)#{ConnId => {Pid, MRef}},
                                monitors = (State#state.monitors)#{MRef => ConnId}};
                Err ->
                    ?ERROR_MSG("Cannot start a session for Megaphone connection ~p: ~p", [ConnId, Err]),
                    megaphone_socket:close(Socket),
                    State
            end;
        error ->
            %% Not one of ours (detached meanwhile): refuse the client.
            _ = megaphone:close(Node, ConnId, [noconnect]),
            State
    end.

%% The TLS options of `start': those set in the module's options.
tls_options(Opts) ->
    [{Opt, Value} || {Opt, Get} <- [{certfile, fun mod_megaphone_opt:certfile/1},
                                    {ciphers, fun mod_megaphone_opt:ciphers/1},
                                    {tls_min_version, fun mod_megaphone_opt:tls_min_version/1},
                                    {handshake_timeout, fun mod_megaphone_opt:handshake_timeout/1},
                                    {max_handshakes_per_ip, fun mod_megaphone_opt:max_handshakes_per_ip/1}],
                     (Value = Get(Opts)) /= undefined].

%% The parser options of `start': the mode, and in parsed mode the
%% sessions' max_stanza_size (enforced by the node now) and the window the
%% credit hook is written for.
parser_options(Opts) ->
    case mod_megaphone_opt:parser(Opts) of
        ejabberd ->
            [{parser, ejabberd}];
        megaphone ->
            MaxStanzaSize = proplists:get_value(max_stanza_size, c2s_options(Opts), infinity),
            [{parser, megaphone}, {max_stanza_size, MaxStanzaSize}, {window, megaphone_socket:window()}]
    end.

%%====================================================================
%% Hooks
%%====================================================================

%% ejabberd is stopping (`ejabberdctl stop', `leave_cluster', the restart
%% inside `join_cluster'): ejabberd_app:prep_stop/1 runs this hook first,
%% then stops the listeners and ejabberd_sm, and only then gen_mod:stop/0
%% stops this module. Until then the Megaphone nodes still count this node as
%% a controller and, with least_sessions, give it the next connections, whose
%% sessions cannot open without ejabberd_sm (their logins hang until the
%% module stops). So detach from every Megaphone node here, at the start: the
%% nodes close this node's connections and its sessions are told to close,
%% the nodes keep their listeners for the other nodes of the cluster and
%% offer this node nothing more. A connection already on its way is refused
%% (start_session/6, node no longer ours).
-spec stopping() -> ok.
stopping() ->
    try
        gen_server:call(?MODULE, detach_all, ?START_TIMEOUT)
    catch
        exit:Reason ->
            %% Not running, or too slow: terminate/2 detaches what is left.
            ?DEBUG("mod_megaphone did not detach on ejabberd_stopping: ~p", [Reason]),
            ok
    end.

%% Runs inside each c2s for every element it has handled; in a parsed
%% session, gives the node credit for the next ones.
-spec c2s_handle_recv(State, fxml:xmlel(), term()) -> State when State :: map().
c2s_handle_recv(#{socket := Socket} = State, _El, _Pkt) ->
    megaphone_socket:element_handled(Socket),
    State;
c2s_handle_recv(State, _El, _Pkt) ->
    State.

%% Runs inside a c2s for messages xmpp_stream_in does not know. A parsed
%% session's node found XML that RFC 6120 section 11 forbids after the
%% stream header (which the session has answered): fxml has no event for
%% that, so the node sends this and the session ends its stream with
%% <restricted-xml/>.
-spec c2s_handle_info(State, term()) -> State | {stop, State} when State :: map().
c2s_handle_info(#{lang := Lang} = State, {megaphone_restricted_xml, _ConnId, Text}) when is_binary(Text) ->
    {stop, xmpp_stream_in:send(State, xmpp:serr_restricted_xml(Text, Lang))};
c2s_handle_info(State, {megaphone_idle, _ConnId}) ->
    %% Not established yet (megaphone_c2s hibernates the others): nothing to do.
    {stop, State};
c2s_handle_info(State, _Info) ->
    State.

%% The c2s options: ours where set, else the first c2s listener's, as
%% WebSocket and BOSH take them. Never tls, starttls or zlib: the node
%% terminates TLS, and xmpp_socket:starttls/2 crashes on a foreign socket.
c2s_options(Opts) ->
    Inherited = ejabberd_c2s_config:get_c2s_limits(),
    lists:filtermap(
      fun({Opt, Get}) ->
              case {Get(Opts), proplists:get_value(Opt, Inherited)} of
                  {undefined, undefined} -> false;
                  {undefined, Value} -> {true, {Opt, Value}};
                  {Value, _} -> {true, {Opt, Value}}
              end
      end, [{access, fun mod_megaphone_opt:access/1}, {shaper, fun mod_megaphone_opt:shaper/1},
            {max_stanza_size, fun mod_megaphone_opt:max_stanza_size/1},
            {max_fsm_queue, fun mod_megaphone_opt:max_fsm_queue/1}]).

%% A ConnId names one connection of one run of one node, so a message about
%% it goes to that session and no other.
forward(ConnId, Msg, #state{sessions = Sessions}) ->
    case maps:find(ConnId, Sessions) of
        {ok, {Pid, _}} -> Pid ! Msg;
        error -> ok
    end,
    ok.

%% A session ended: make sure its client is gone too. A close for a
%% connection the node already closed is ignored there.
session_down(MRef, #state{monitors = Monitors, sessions = Sessions, nodes = Nodes} = State) ->
    case maps:take(MRef, Monitors) of
        {ConnId, Monitors1} ->
            Node = node(ConnId),
            _ = megaphone:close(Node, ConnId, [noconnect]),
            Nodes1 = case maps:find(Node, Nodes) of
                         {ok, #mp_node{sessions = N} = MP} -> Nodes#{Node => MP#mp_node{sessions = max(0, N - 1)}};
                         error -> Nodes
                     end,
            State#state{monitors = Monitors1, sessions = maps:remove(ConnId, Sessions), nodes = Nodes1};
        error ->
            State
    end.

%% The link to a Megaphone node is gone, so are its clients: end their
%% sessions now (their 'DOWN' cleans up), then try to reach the node again.
%% Sessions of any run of the node end: a session of an earlier run that
%% waits for XEP-0198 resumption has had its tcp_closed already and ignores
%% another.
node_down(Node, #state{sessions = Sessions, nodes = Nodes} = State) ->
    case maps:find(Node, Nodes) of
        {ok, MP} ->
            Ended = [begin Pid ! {tcp_closed, ConnId}, ConnId end
                     || {ConnId, {Pid, _}} <- maps:to_list(Sessions), node(ConnId) == Node],
            ?WARNING_MSG("Megaphone node ~ts is down; ending its ~b sessions", [Node, length(Ended)]),
            self() ! {connect, Node},
            %% The monitor that fired is spent.
            State#state{nodes = Nodes#{Node => MP#mp_node{status = connecting, start_ref = undefined,
                                                          monitored = false}}};
        error ->
            State
    end.
