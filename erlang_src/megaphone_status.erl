%%%----------------------------------------------------------------------
%%% File    : megaphone_status.erl
%%% Purpose : What mod_megaphone shows an operator: status/0 and the
%%%           `ejabberdctl megaphone_status' command
%%%----------------------------------------------------------------------

%% @doc The operator's view of the Megaphone nodes attached to this ejabberd
%% node: each node's state and session count from `mod_megaphone''s
%% gen_server, and the node's own counters from `megaphone:stats/2'. The
%% counters are asked from the nodes by the caller, so a slow node cannot
%% block the gen_server.
-module(megaphone_status).

-include("ejabberd_commands.hrl").

%% API.
-export([status/0]).
-export([sessions/0]).
-export([commands/0]).

%% ejabberdctl commands.
-export([megaphone_status/0]).
-export([megaphone_sessions/1]).

-export_type([node_status/0]).
-export_type([node_info/0]).

-type node_status() :: connecting | starting | started.

-type node_info() :: #{node := node(), status := node_status(), sessions := non_neg_integer(),
                       connections := non_neg_integer() | undefined,
                       bytes_in := non_neg_integer() | undefined,
                       bytes_out := non_neg_integer() | undefined,
                       refused := non_neg_integer() | undefined,
                       closed := #{atom() => non_neg_integer()},
                       per_node := #{node() => non_neg_integer()}}.

%% The node's `closed' reasons that are refusals or limits, summed as
%% `refused'.
-define(REFUSALS, [max_connections, emfile, max_connections_per_ip, connection_rate_per_ip,
                   stream_header_timeout, send_queue_full, handshake_timeout, handshake_limit,
                   starttls_refused]).

%%====================================================================
%% API
%%====================================================================

%% Each configured Megaphone node with its state and, once started, its
%% counters. `per_node' is the node's open connections by the ejabberd node
%% that owns them (every node of a cluster attaches it; one entry per
%% attached ejabberd node). `refused' sums the node's refusals and limit closes (the
%% `closed' reasons in ?REFUSALS); `closed' is the node's whole map. Empty
%% when mod_megaphone is not running.
-spec status() -> [node_info()].
status() ->
    [begin
         Stats = case Status of
                     started ->
                         case megaphone:stats(Name, 2000) of
                             {ok, S} -> S;
                             {error, _} -> #{}
                         end;
                     _ -> #{}
                 end,
         #{node => Name, status => Status, sessions => Sessions,
           connections => maps:get(connections, Stats, undefined),
           bytes_in => maps:get(bytes_in, Stats, undefined),
           bytes_out => maps:get(bytes_out, Stats, undefined),
           refused => refused(Stats),
           closed => maps:get(closed, Stats, #{}),
           per_node => per_node(Stats)}
     end || {Name, Status, Sessions} <- configured_nodes()].

%% The sessions each configured Megaphone node carries on this ejabberd node
%% (live c2s processes, including those waiting for XEP-0198 resumption),
%% from the gen_server alone: cheap enough for a metrics hook to poll.
-spec sessions() -> #{node() => non_neg_integer()}.
sessions() ->
    maps:from_list([{Name, Sessions} || {Name, _Status, Sessions} <- configured_nodes()]).

%% The ejabberdctl commands, registered by mod_megaphone while it runs.
-spec commands() -> [ejabberd_commands()].
commands() ->
    [#ejabberd_commands{
        name = megaphone_status, tags = [server],
        desc = "Show the Megaphone nodes attached to this node",
        longdesc = "One line per configured Megaphone node: its name, its state "
                   "(connecting, starting, started), the sessions started through it, "
                   "the node's own count of open connections and bytes in and out, "
                   "and the connections its limits refused or closed (max_connections, "
                   "max_connections_per_ip, connection_rate_per_ip, stream_header_timeout, "
                   "send_queue_full, TLS handshake limits), in total and by limit, and "
                   "the node's open connections per attached ejabberd node (a cluster's "
                   "nodes share each Megaphone node).",
        module = ?MODULE, function = megaphone_status,
        args = [],
        result_desc = "Node, state, sessions, connections, bytes in, bytes out, "
                      "refused (connections refused or closed by a limit), which limits, "
                      "and connections per ejabberd node",
        result_example = [{<<"megaphone@localhost">>, started, 2, 2, 1024, 4096, 3,
                           <<"max_connections_per_ip=2 stream_header_timeout=1">>,
                           <<"ejabberd@a=2 ejabberd@b=1">>}],
        result = {nodes, {list, {node, {tuple, [{name, string}, {state, atom},
                                               {sessions, integer}, {connections, integer},
                                               {bytes_in, integer}, {bytes_out, integer},
                                               {refused, integer}, {refusals, string},
                                               {per_node, string}]}}}}},
     #ejabberd_commands{
        name = megaphone_sessions, tags = [server, statistics],
        desc = "Sessions one Megaphone node carries on this node",
        longdesc = "The number of c2s sessions started through the Megaphone node NODE "
                   "(including sessions waiting for stream resumption); 0 for a node that "
                   "is not configured. For monitoring scripts, like connected_users_number.",
        module = ?MODULE, function = megaphone_sessions,
        args = [{node, binary}],
        args_example = [<<"megaphone@localhost">>],
        args_desc = ["Megaphone node name"],
        result_desc = "Number of sessions",
        result_example = 2,
        result = {sessions, integer}}].

%%====================================================================
%% ejabberdctl command
%%====================================================================

%% `ejabberdctl megaphone_status': one line per node. The last column names
%% each non-zero refusal count, e.g. `max_connections_per_ip=3 send_queue_full=1'.
-spec megaphone_status() -> [{binary(), atom(), integer(), integer(), integer(), integer(),
                              integer(), binary(), binary()}].
megaphone_status() ->
    [{atom_to_binary(Node, utf8), Status, Sessions, undefined_to_zero(Conns),
      undefined_to_zero(In), undefined_to_zero(Out), undefined_to_zero(Refused),
      refusal_text(Closed), per_node_text(PerNode)}
     || #{node := Node, status := Status, sessions := Sessions, connections := Conns,
          bytes_in := In, bytes_out := Out, refused := Refused, closed := Closed,
          per_node := PerNode} <- status()].

%% `ejabberdctl megaphone_sessions NODE'.
-spec megaphone_sessions(binary()) -> non_neg_integer().
megaphone_sessions(Node) ->
    Sessions = sessions(),
    case [N || {Name, N} <- maps:to_list(Sessions), atom_to_binary(Name, utf8) =:= Node] of
        [N] -> N;
        [] -> 0
    end.

%%====================================================================
%% Internal functions
%%====================================================================

%% {Name, Status, Sessions} of each configured node; none without mod_megaphone.
configured_nodes() ->
    try gen_server:call(mod_megaphone, nodes, 5000)
    catch exit:{noproc, _} -> []
    end.

refused(#{closed := Closed}) ->
    lists:sum([maps:get(R, Closed, 0) || R <- ?REFUSALS]);
refused(_) ->
    undefined.

refusal_text(Closed) ->
    iolist_to_binary(
      lists:join(" ", [io_lib:format("~ts=~b", [R, N])
                       || R <- ?REFUSALS, (N = maps:get(R, Closed, 0)) > 0])).

%% `controller_nodes => #{EjabberdNode => #{connections => N}}' of the
%% node's stats, as `#{EjabberdNode => N}'.
per_node(#{controller_nodes := PerNode}) ->
    maps:map(fun(_, #{connections := N}) -> N end, PerNode);
per_node(_) ->
    #{}.

per_node_text(PerNode) ->
    iolist_to_binary(
      lists:join(" ", [io_lib:format("~ts=~b", [Node, N]) || {Node, N} <- lists:sort(maps:to_list(PerNode))])).

undefined_to_zero(undefined) -> 0;
undefined_to_zero(N) -> N.
