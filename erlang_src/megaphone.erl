%%%----------------------------------------------------------------------
%%% File    : megaphone.erl
%%% Purpose : Client API of a Megaphone node
%%%----------------------------------------------------------------------

%% @doc Client API of a Megaphone node.
%%
%% A Megaphone node is a hidden C node, written in Swift, that holds client
%% TCP and TLS sockets and moves their bytes over Erlang distribution. It is
%% reached as `{megaphone, Node}'. Each function here sends one distribution
%% message to it; they hide the message format (see DESIGN.md) and need
%% nothing else loaded, so they work from a plain `erl -sname x -setcookie C'
%% shell:
%%
%% ```
%% 1> Node = 'megaphone@vm'.
%% 2> {ok, #{listeners := [{tcp, _, Port}]}} =
%%        megaphone:start(Node, [{listen, [{tcp, {127,0,0,1}, 5222}]}]).
%% 3> flush().    % a client connects:
%% Shell got {megaphone_connect, NodePid, ConnId, {PeerIP, PeerPort}, {LocalIP, 5222}, tcp}
%% 4> megaphone:recv(Node, ConnId, 5000).
%% {ok, <<"<?xml version='1.0'?>">>}
%% 5> megaphone:send_data(Node, ConnId, <<"<stream:stream ...>">>).
%% ok
%% '''
%%
%% What the node sends back, besides the replies to `start', `stats' and
%% `shutdown':
%% <ul>
%% <li>`{megaphone_connect, NodePid, ConnId, {PeerIP, PeerPort},
%%     {LocalIP, LocalPort}, tcp | tls}' to the controller when a client has
%%     connected (and finished any TLS handshake);</li>
%% <li>`{tcp, ConnId, Binary}' to the owner, one chunk per `get_data/2'
%%     (`{parser, ejabberd}', the default);</li>
%% <li>`{'$gen_event', Event}' to the owner with `{parser, megaphone}': the
%%     node parses the client's XML stream and sends the events `fxml_stream'
%%     would (`{xmlstreamstart, Name, Attrs}', `{xmlstreamelement, El}',
%%     `{xmlstreamend, Name}', `{xmlstreamerror, Reason}'); the first
%%     `get_data/2' opens a window of `window' elements, and `credit/4' gives
%%     back what the owner has handled;</li>
%% <li>`{tcp_closed, ConnId}' and `{tcp_error, ConnId, Reason}' to the owner,
%%     else the controller, even when no `get_data/2' is outstanding;</li>
%% <li>`{megaphone_error, RefOrConnId, Reason}' to the sender of a malformed
%%     or unknown request; the node keeps serving.</li>
%% </ul>
-module(megaphone).

%% API.
-export([start/2]).
-export([start/3]).
-export([start_async/3]).
-export([stats/1]).
-export([stats/2]).
-export([shutdown/1]).
-export([shutdown/2]).
-export([get_data/2]).
-export([get_data/3]).
-export([put_data/3]).
-export([send_data/3]).
-export([send_data/4]).
-export([close/2]).
-export([close/3]).
-export([credit/4]).
-export([reset_stream/3]).
-export([set_shaper/4]).
-export([recv/3]).

-export_type([conn_id/0]).
-export_type([transport/0]).
-export_type([listener/0]).
-export_type([opt/0]).
-export_type([opts/0]).
-export_type([info/0]).
-export_type([stats/0]).
-export_type([send_opt/0]).

%% The registered name we address. A C node accepts any name; DESIGN.md keeps
%% this one so that traces read well.
-define(NAME, megaphone).
-define(DEFAULT_TIMEOUT, 5000).
%% A graceful shutdown flushes every connection's send queue first.
-define(DEFAULT_SHUTDOWN_TIMEOUT, 15000).

-type conn_id() :: reference().
%% A connection's ID: a reference the Megaphone node mints when a client
%% connects. It carries the node's name and creation (`node(ConnId)' is the
%% node), so no connection of another Megaphone node, or of an earlier or
%% later run of the same node, ever has the same ConnId; a request that
%% names a ConnId of another run is refused as `unknown_connection'.

-type transport() :: tcp | starttls | tls.
%% `tcp': plain; `starttls': the node answers the first stream header with
%% required STARTTLS and hands the session over after the handshake; `tls':
%% direct TLS (XEP-0368).

-type listener() :: {transport(), inet:ip_address() | any, inet:port_number()}.
%% Port 0 asks for an ephemeral port; `info()' tells which one was bound.

-type opt() :: {listen, [listener()]}
             | {certfile, file:filename_all()}
             | {max_connections, pos_integer() | infinity}
             | {max_connections_per_ip, pos_integer() | infinity}
             | {connection_rate_per_ip, {pos_integer(), pos_integer()} | infinity}
             | {stream_header_timeout, pos_integer() | infinity}
             | {announce_timeout, pos_integer() | infinity}
             | {max_chunk, pos_integer()}
             | {send_queue_limit, pos_integer()}
             | {input_buffer_limit, pos_integer()}
             | {controller, pid()}
             | {parser, ejabberd | megaphone}
             | {max_stanza_size, pos_integer() | infinity}
             | {window, pos_integer()}
             | {hibernate_after, pos_integer() | infinity}
             | {balance, round_robin | least_sessions}.
%% <ul>
%% <li>`listen': the listeners to open;</li>
%% <li>`certfile': PEM certificate chain and key, for `starttls' and `tls';</li>
%% <li>`max_connections': clients past this are closed at once (default
%%     `infinity');</li>
%% <li>`max_connections_per_ip': open connections one client address (IPv4,
%%     or IPv6 /64) may have; more are closed at once (default `infinity');</li>
%% <li>`connection_rate_per_ip': `{Count, PeriodMs}', new connections one
%%     address may open per period, a token bucket (default `infinity');</li>
%% <li>`stream_header_timeout': milliseconds an announced connection may take
%%     to send a complete XMPP stream header; then it gets a
%%     `connection-timeout' stream error and is closed (default `infinity':
%%     the node moves any bytes; an XMPP controller sets it);</li>
%% <li>`announce_timeout': milliseconds an announced connection may wait
%%     for its first `get_data'; then it is closed, its controller told
%%     `{tcp_closed, ConnId}', and it is counted as `announce_timeout' in
%%     `stats' `closed' (default 30000: a controller that died while its
%%     node is up would otherwise leave it open for ever);</li>
%% <li>`max_chunk': the largest `{tcp, ConnId, Binary}' (default 64 KiB);</li>
%% <li>`send_queue_limit': bytes queued for one client; data that would go
%%     past it is dropped, the owner is told `{tcp_error, ConnId,
%%     send_queue_full}', and the client gets a `policy-violation' stream
%%     error after what is queued, then is closed;</li>
%% <li>`input_buffer_limit': bytes held for one client before `get_data'
%%     takes them (`put_data' past it is refused);</li>
%% <li>`controller': who gets `megaphone_connect' (default: the caller of
%%     `start'). The node keeps one controller per Erlang node: a `start'
%%     from another node (another ejabberd node of a cluster) adds one, and
%%     must then ask for the same options as those already attached (all but
%%     `controller'), or it gets `{error, {config_mismatch, Names}}' and
%%     nothing changes; a `start' again from the same node replaces its
%%     controller; a `start' with no listeners from one controller of several
%%     detaches it (its connections close, the listeners stay for the
%%     others);</li>
%% <li>`balance': which controller hears of a new connection when several
%%     are attached: `least_sessions' (default: the one whose node owns the
%%     fewest open connections, ties in turn) or `round_robin' (in turn);</li>
%% <li>`parser': `ejabberd' (default) hands the owner raw bytes, for
%%     ejabberd's own parser; `megaphone' has the node parse the client's
%%     stream and send the owner `{'$gen_event', Event}' messages;</li>
%% <li>`max_stanza_size': with `{parser, megaphone}', the largest stanza in
%%     bytes; past it the owner gets `{xmlstreamerror, <<"XML stanza is too
%%     big">>}' (default `infinity': 16 MiB, the node's own bound);</li>
%% <li>`window': with `{parser, megaphone}', the elements a connection may
%%     have in flight to its owner before `credit/4' (default 16);</li>
%% <li>`hibernate_after': milliseconds a connection may move no byte, either
%%     way, before its owner is sent `{megaphone_idle, ConnId}' (once per quiet
%%     spell; default `infinity': never).</li>
%% </ul>

-type opts() :: [opt()].

-type info() :: #{listeners => [listener()], atom() => term()}.
%% What `start' opened; `listeners' carries the ports actually bound.

-type stats() :: #{atom() => term()}.
%% Counters: at least `connections', `accepted', `bytes_in', `bytes_out'.

-type send_opt() :: noconnect.
%% `noconnect': use the distribution connection to the node if there is
%% one, and fail with `{error, nodedown}' rather than set one up (as
%% `erlang:send/3' does). For callers that must not block on a connection
%% set-up, or must not bring back a node whose loss they handle: a session's
%% socket calls, the controller.

%%====================================================================
%% API
%%====================================================================

%% @equiv start(Node, Opts, 5000)
-spec start(node(), opts()) -> {ok, info()} | {error, nodedown | timeout | term()}.
start(Node, Opts) ->
    start(Node, Opts, ?DEFAULT_TIMEOUT).

%% @doc Opens the listeners in `Opts' and makes the caller (or
%% `{controller, Pid}') the controller. `Opts' is the whole configuration:
%% calling it again replaces it, keeping open (on the same port, also for
%% port 0) the listeners it names again; with the same options it changes
%% nothing and returns the same `Info'. `{error, nodedown}' also when this
%% node is not distributed.
-spec start(node(), opts(), timeout()) ->
          {ok, info()} | {error, nodedown | timeout | term()}.
start(Node, Opts, Timeout) ->
    call(Node, fun(Ref) -> {start, self(), Ref, Opts} end,
         megaphone_started, Timeout).

%% @doc Sends `start' without waiting for the reply: it arrives to the caller
%% as `{megaphone_started, Ref, Info}' or `{megaphone_error, Ref, Reason}',
%% with the `Ref' returned here. For a gen_server that must not block (the
%% controller in ejabberd); see `start/3' for `Opts'.
-spec start_async(node(), opts(), [send_opt()]) -> {ok, reference()} | {error, nodedown}.
start_async(Node, Opts, SendOpts) ->
    Ref = make_ref(),
    case cast(Node, {start, self(), Ref, Opts}, SendOpts) of
        ok -> {ok, Ref};
        Error -> Error
    end.

%% @equiv stats(Node, 5000)
-spec stats(node()) -> {ok, stats()} | {error, nodedown | timeout | term()}.
stats(Node) ->
    stats(Node, ?DEFAULT_TIMEOUT).

%% @doc The node's counters.
-spec stats(node(), timeout()) ->
          {ok, stats()} | {error, nodedown | timeout | term()}.
stats(Node, Timeout) ->
    call(Node, fun(Ref) -> {stats, self(), Ref} end, megaphone_stats, Timeout).

%% @equiv shutdown(Node, 15000)
-spec shutdown(node()) -> {ok, stats()} | {error, nodedown | timeout | term()}.
shutdown(Node) ->
    shutdown(Node, ?DEFAULT_SHUTDOWN_TIMEOUT).

%% @doc Stops the node gracefully: it stops accepting, flushes and closes
%% every connection (each owner gets `{tcp_closed, ConnId}'), replies with
%% its final counters and exits. Returns once the link to the node has
%% dropped, or `Timeout' after the call at the latest.
%%
%% When the caller's node is one controller of several (an ejabberd cluster),
%% only that controller leaves: the connections its node owns are closed
%% (owners told), the node keeps serving the others, and the result is
%% `{detached, Stats}' at once.
-spec shutdown(node(), timeout()) ->
          {ok, stats()} | {detached, stats()} | {error, nodedown | timeout | term()}.
shutdown(Node, Timeout) ->
    Deadline = deadline(Timeout),
    with_node_monitor(
      Node,
      fun() ->
              Ref = make_ref(),
              erlang:send({?NAME, Node}, {shutdown, self(), Ref}),
              receive
                  {megaphone_detached, Ref, Stats} -> {detached, Stats};
                  {megaphone_stopped, Ref, Stats} ->
                      %% The node exits right after its reply: wait for the
                      %% link to drop, so that on return the node is gone.
                      receive
                          {nodedown, Node} -> ok
                      after remaining(Deadline) ->
                              ok
                      end,
                      {ok, Stats};
                  {megaphone_error, Ref, Reason} ->
                      {error, Reason};
                  {nodedown, Node} ->
                      {error, nodedown}
              after Timeout ->
                      {error, timeout}
              end
      end).

%% @doc Asks for the next chunk of the client's bytes ("active once"). It
%% arrives to the caller as `{tcp, ConnId, Binary}', at most `max_chunk'
%% bytes, at once if bytes are buffered, else when they arrive; one chunk per
%% call. The caller becomes the connection's owner.
-spec get_data(node(), conn_id()) -> ok | {error, nodedown}.
get_data(Node, ConnId) ->
    get_data(Node, ConnId, []).

%% @doc `get_data/2' with send options.
-spec get_data(node(), conn_id(), [send_opt()]) -> ok | {error, nodedown}.
get_data(Node, ConnId, SendOpts) ->
    cast(Node, {get_data, self(), ConnId}, SendOpts).

%% @doc Injects `Data' into the connection's input as if the client had sent
%% it. `get_data/2' delivers it after the bytes the node already holds for
%% the connection and before any it reads from the socket later.
-spec put_data(node(), conn_id(), iodata()) -> ok | {error, nodedown}.
put_data(Node, ConnId, Data) ->
    cast(Node, {put_data, ConnId, Data}, []).

%% @doc Queues `Data' for the client socket.
-spec send_data(node(), conn_id(), iodata()) -> ok | {error, nodedown}.
send_data(Node, ConnId, Data) ->
    send_data(Node, ConnId, Data, []).

%% @doc `send_data/3' with send options.
-spec send_data(node(), conn_id(), iodata(), [send_opt()]) -> ok | {error, nodedown}.
send_data(Node, ConnId, Data, SendOpts) ->
    cast(Node, {send_data, ConnId, Data}, SendOpts).

%% @doc Closes the connection once what is queued for it has been sent.
-spec close(node(), conn_id()) -> ok | {error, nodedown}.
close(Node, ConnId) ->
    close(Node, ConnId, []).

%% @doc `close/2' with send options.
-spec close(node(), conn_id(), [send_opt()]) -> ok | {error, nodedown}.
close(Node, ConnId, SendOpts) ->
    cast(Node, {close, ConnId}, SendOpts).

%% @doc Parsed connections (`{parser, megaphone}'): the owner has handled `N'
%% more elements, so the node may send `N' more. Ignored for raw connections.
-spec credit(node(), conn_id(), pos_integer(), [send_opt()]) -> ok | {error, nodedown}.
credit(Node, ConnId, N, SendOpts) ->
    cast(Node, {credit, ConnId, N}, SendOpts).

%% @doc Parsed connections: the bytes the client sends from now on start a
%% new stream (after SASL success; the session calls it before it sends
%% `<success/>', so the client's new header always comes after it).
-spec reset_stream(node(), conn_id(), [send_opt()]) -> ok | {error, nodedown}.
reset_stream(Node, ConnId, SendOpts) ->
    cast(Node, {reset_stream, ConnId}, SendOpts).

%% @doc Parsed connections: the node reads the client at most at `Rate' bytes
%% a second, in bursts of at most `Burst' (the session's shaper, which has no
%% socket of its own to pace); `none' lifts the limit.
-spec set_shaper(node(), conn_id(), {pos_integer(), pos_integer()} | none, [send_opt()]) ->
          ok | {error, nodedown}.
set_shaper(Node, ConnId, Shaper, SendOpts) ->
    cast(Node, {shaper, ConnId, Shaper}, SendOpts).

%% @doc `get_data/2', then waits for the chunk: for shells and tests. On
%% `{error, timeout}' the request stays armed and its chunk arrives later as
%% a `{tcp, ConnId, Binary}' message.
-spec recv(node(), conn_id(), timeout()) ->
          {ok, binary()} | {error, closed | timeout | nodedown | term()}.
recv(Node, ConnId, Timeout) ->
    with_node_monitor(
      Node,
      fun() ->
              erlang:send({?NAME, Node}, {get_data, self(), ConnId}),
              receive
                  {tcp, ConnId, Bin} -> {ok, Bin};
                  {tcp_closed, ConnId} -> {error, closed};
                  {tcp_error, ConnId, Reason} -> {error, Reason};
                  {megaphone_error, ConnId, Reason} -> {error, Reason};
                  {nodedown, Node} -> {error, nodedown}
              after Timeout ->
                      {error, timeout}
              end
      end).

%%====================================================================
%% Internal functions
%%====================================================================

%% net_adm:ping/1 hangs against a C node; net_kernel:connect_node/1 does not.
%% It returns `ignored' when this node is not distributed.
-spec connect(node()) -> ok | {error, nodedown}.
connect(Node) ->
    case net_kernel:connect_node(Node) of
        true -> ok;
        _ -> {error, nodedown}
    end.

%% The async calls sit on the hot path (a c2s asks for every chunk), so try
%% the established connection first and go through net_kernel only when it
%% is missing.
%% With `noconnect' a missing connection is an error at once.
-spec cast(node(), term(), [send_opt()]) -> ok | {error, nodedown}.
cast(Node, Msg, SendOpts) ->
    case erlang:send({?NAME, Node}, Msg, [noconnect]) of
        ok ->
            ok;
        noconnect ->
            case lists:member(noconnect, SendOpts) orelse connect(Node) of
                true ->
                    {error, nodedown};
                ok ->
                    erlang:send({?NAME, Node}, Msg),
                    ok;
                Error ->
                    Error
            end
    end.

-spec call(node(), fun((reference()) -> term()), atom(), timeout()) ->
          {ok, term()} | {error, term()}.
call(Node, Request, ReplyTag, Timeout) ->
    with_node_monitor(
      Node, fun() -> request(Node, Request, ReplyTag, Timeout) end).

%% erlang:monitor(process, ...) delivers nothing for a pid or name on a C
%% node, so a lost link is seen through monitor_node/2 instead.
-spec with_node_monitor(node(), fun(() -> Result)) -> Result | {error, nodedown}.
with_node_monitor(Node, Fun) ->
    case connect(Node) of
        ok ->
            true = erlang:monitor_node(Node, true),
            try
                Fun()
            after
                true = erlang:monitor_node(Node, false),
                flush_nodedown(Node)
            end;
        Error ->
            Error
    end.

-spec request(node(), fun((reference()) -> term()), atom(), timeout()) ->
          {ok, term()} | {error, term()}.
request(Node, Request, ReplyTag, Timeout) ->
    Ref = make_ref(),
    erlang:send({?NAME, Node}, Request(Ref)),
    receive
        {ReplyTag, Ref, Reply} -> {ok, Reply};
        {megaphone_error, Ref, Reason} -> {error, Reason};
        {nodedown, Node} -> {error, nodedown}
    after Timeout ->
            {error, timeout}
    end.

%% A nodedown that raced with monitor_node(Node, false).
-spec flush_nodedown(node()) -> ok.
flush_nodedown(Node) ->
    receive
        {nodedown, Node} -> ok
    after 0 ->
            ok
    end.

-spec deadline(timeout()) -> integer() | infinity.
deadline(infinity) ->
    infinity;
deadline(Timeout) ->
    erlang:monotonic_time(millisecond) + Timeout.

-spec remaining(integer() | infinity) -> timeout().
remaining(infinity) ->
    infinity;
remaining(Deadline) ->
    max(0, Deadline - erlang:monotonic_time(millisecond)).
