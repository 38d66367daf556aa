%%%----------------------------------------------------------------------
%%% File    : megaphone_cluster_tests.erl
%%% Purpose : One Megaphone node, two controllers on two Erlang nodes
%%%----------------------------------------------------------------------

%% @doc An ejabberd cluster attaches every Megaphone node from each of its
%% nodes (issue 15). Here two peer nodes play two ejabberd nodes: each runs a
%% relay process as its controller (`{controller, Relay}'), which forwards
%% what the Megaphone node sends it to the test process as `{relay, PeerNode,
%% Msg}'. Killing a peer is an ejabberd node going down.
-module(megaphone_cluster_tests).

-include_lib("eunit/include/eunit.hrl").

%% Run on the peers.
-export([spawn_relay/1]).

-define(LOCALHOST, {127, 0, 0, 1}).
-define(WAIT, 5000).
%% Connections per controller in the frozen-controller test.
-define(FROZEN_CLIENTS, 200).

cluster_test_() ->
    {foreach,
     fun() -> megaphone_test_node:start() end,
     fun megaphone_test_node:cleanup/1,
     [megaphone_test_node:instance("round_robin alternates; a disagreeing start is refused; "
                                   "a controller node going down closes only its connections",
                                   fun round_robin_and_node_down/1, 90),
      megaphone_test_node:instance("least_sessions fills the emptier node; "
                                   "a controller's shutdown detaches only it",
                                   fun least_sessions_and_leave/1, 90),
      megaphone_test_node:instance("a new configuration is taken once every attached controller "
                                   "asks for it (a rolling reload_config)",
                                   fun rolling_reconfiguration/1, 90)]}.

%% A frozen controller node must not hold the clients of the other: the
%% node's client-bytes budget (`--dist-queue-limit', 1 MiB here) is shared,
%% and a SIGSTOPped node takes nothing until net_ticktime (60 s) drops it.
frozen_controller_test_() ->
    {foreach,
     fun() -> megaphone_test_node:start(["--dist-queue-limit", integer_to_list(1 bsl 20)]) end,
     fun megaphone_test_node:cleanup/1,
     [megaphone_test_node:instance("a frozen controller node holds back only its own clients",
                                   fun frozen_controller/1, 90)]}.

%%====================================================================
%% Tests
%%====================================================================

round_robin_and_node_down(#{node := Node, cookie := Cookie}) ->
    {A, PeerA, RelayA} = controller_node(Node, Cookie),
    {B, PeerB, RelayB} = controller_node(Node, Cookie),
    try
        Opts = [{listen, [{tcp, ?LOCALHOST, 0}]}, {balance, round_robin}, {announce_timeout, infinity}],
        {ok, #{listeners := [{tcp, _, Port}]}} = start(PeerA, Node, RelayA, Opts),
        %% Port 0 asked again: the same listener, on the port it got.
        ?assertMatch({ok, #{listeners := [{tcp, _, Port}]}}, start(PeerB, Node, RelayB, Opts)),
        ?assertMatch(#{controllers := 2}, stats(Node)),
        Clients = [connect(Port) || _ <- lists:seq(1, 6)],
        Owners = [Owner || {_, Owner, _} <- Clients],
        ?assertEqual(3, length([N || N <- Owners, N == A])),
        %% In turn: no node twice in a row.
        ?assertEqual([], [X || {X, X} <- lists:zip(lists:droplast(Owners), tl(Owners))]),
        ?assertMatch(#{controller_nodes := #{A := #{connections := 3}, B := #{connections := 3}}},
                     stats(Node)),

        %% Another configuration from B: refused, and nothing changes.
        ?assertEqual({error, {config_mismatch, [max_chunk]}},
                     start(PeerB, Node, RelayB, [{max_chunk, 1024} | Opts])),
        ?assertEqual({error, {config_mismatch, [listen]}},
                     start(PeerB, Node, RelayB, [{listen, [{tcp, ?LOCALHOST, Port}]} | tl(Opts)])),
        ?assertMatch(#{controllers := 2,
                       controller_nodes := #{A := #{connections := 3}, B := #{connections := 3}}},
                     stats(Node)),
        %% The same configuration again from A: its entry is replaced, not added.
        ?assertMatch({ok, #{listeners := [{tcp, _, Port}]}}, start(PeerA, Node, RelayA, Opts)),
        ?assertMatch(#{controllers := 2}, stats(Node)),

        %% B's sessions take their connections.
        [ok = get_data(PeerB, Node, RelayB, Id) || {_, Owner, Id} <- Clients, Owner == B],

        %% A goes down: its connections close, B's stay, the listener stays.
        ok = peer:stop(PeerA),
        megaphone_test_client:poll(fun() -> maps:get(controllers, stats(Node)) == 1 end, ?WAIT),
        [?assertMatch({_, closed}, megaphone_test_client:read_until_closed(C, megaphone_test_client:deadline(?WAIT)))
         || {C, Owner, _} <- Clients, Owner == A],
        Stats = stats(Node),
        ?assertMatch(#{connections := 3, controller_nodes := #{B := #{connections := 3}}}, Stats),
        ?assertEqual([B], maps:keys(maps:get(controller_nodes, Stats))),
        ?assertMatch(#{closed := #{node_down := 3}}, Stats),
        %% B's connections still carry bytes.
        [begin
             ok = gen_tcp:send(C, <<"still here">>),
             ?assertEqual({tcp, Id, <<"still here">>}, relayed_data(B, Id))
         end || {C, Owner, Id} <- Clients, Owner == B],
        %% A connect right after is served, by the survivor.
        {_, Next, _} = connect(Port),
        ?assertEqual(B, Next)
    after
        catch peer:stop(PeerA),
        catch peer:stop(PeerB)
    end.

least_sessions_and_leave(#{node := Node, cookie := Cookie}) ->
    {A, PeerA, RelayA} = controller_node(Node, Cookie),
    {B, PeerB, RelayB} = controller_node(Node, Cookie),
    try
        %% least_sessions is the default.
        Opts = [{listen, [{tcp, ?LOCALHOST, 0}]}, {announce_timeout, infinity}],
        {ok, #{listeners := [{tcp, _, Port}]}} = start(PeerA, Node, RelayA, Opts),
        First = [connect(Port) || _ <- lists:seq(1, 3)],
        ?assertEqual([A, A, A], [Owner || {_, Owner, _} <- First]),
        {ok, _} = start(PeerB, Node, RelayB, Opts),
        %% B, empty, takes the next three; then they are even and alternate.
        Second = [connect(Port) || _ <- lists:seq(1, 3)],
        ?assertEqual([B, B, B], [Owner || {_, Owner, _} <- Second]),
        Third = [connect(Port) || _ <- lists:seq(1, 2)],
        ?assertEqual(lists:sort([A, B]), lists:sort([Owner || {_, Owner, _} <- Third])),
        ?assertMatch(#{controller_nodes := #{A := #{connections := 4}, B := #{connections := 4}}},
                     stats(Node)),

        %% B's controller shuts down: only B leaves; its connections are
        %% closed and B is told, A keeps its own and the listener.
        ?assertMatch({detached, #{controllers := 1}}, peer:call(PeerB, megaphone, shutdown, [Node], ?WAIT)),
        Mine = [{C, Id} || {C, Owner, Id} <- First ++ Second ++ Third, Owner == B],
        [?assertEqual({tcp_closed, Id}, relayed_closed(B, Id))
         || {_, Id} <- Mine],
        [?assertMatch({_, closed}, megaphone_test_client:read_until_closed(C, megaphone_test_client:deadline(?WAIT)))
         || {C, _} <- Mine],
        Stats = stats(Node),
        ?assertMatch(#{controllers := 1, connections := 4,
                       controller_nodes := #{A := #{connections := 4}}}, Stats),
        ?assertEqual([A], maps:keys(maps:get(controller_nodes, Stats))),
        {_, Next, _} = connect(Port),
        ?assertEqual(A, Next),

        %% B comes back (A holds 5, so B takes the next one), then leaves
        %% the way mod_megaphone does when the module stops: a start with
        %% no listeners. Only B's connection closes; the listener stays.
        {ok, _} = start(PeerB, Node, RelayB, Opts),
        {Back, B, BackId} = connect(Port),
        ?assertMatch({ok, #{listeners := [{tcp, _, Port}]}},
                     start(PeerB, Node, RelayB, [{listen, []} | tl(Opts)])),
        ?assertEqual({tcp_closed, BackId}, relayed_closed(B, BackId)),
        ?assertMatch({_, closed}, megaphone_test_client:read_until_closed(Back, megaphone_test_client:deadline(?WAIT))),
        ?assertMatch(#{controllers := 1, connections := 5, controller_nodes := #{A := #{connections := 5}}},
                     stats(Node)),
        {_, Last, _} = connect(Port),
        ?assertEqual(A, Last)
    after
        catch peer:stop(PeerA),
        catch peer:stop(PeerB)
    end.

%% An ejabberd cluster changes shared options node by node (`reload_config'
%% on each): the first to ask is refused while the others hold the old
%% configuration, and the ask that makes them all agree applies it.
rolling_reconfiguration(#{node := Node, cookie := Cookie}) ->
    {_, PeerA, RelayA} = controller_node(Node, Cookie),
    {_, PeerB, RelayB} = controller_node(Node, Cookie),
    {_, PeerC, RelayC} = controller_node(Node, Cookie),
    try
        Opts = [{listen, [{tcp, ?LOCALHOST, 0}]}, {announce_timeout, infinity}],
        {ok, #{listeners := [{tcp, _, Port}], max_chunk := OldChunk}} = start(PeerA, Node, RelayA, Opts),
        {ok, _} = start(PeerB, Node, RelayB, Opts),
        {Kept, _, _} = connect(Port),
        NewPort = megaphone_test_client:free_port(),
        New = [{listen, [{tcp, ?LOCALHOST, NewPort}]}, {max_chunk, OldChunk * 2} | tl(Opts)],
        Mismatch = {error, {config_mismatch, [listen, max_chunk]}},

        %% B asks first: refused while A holds the old one; nothing changes.
        ?assertEqual(Mismatch, start(PeerB, Node, RelayB, New)),
        ?assertMatch(#{controllers := 2, listeners := [{tcp, _, Port}]}, stats(Node)),
        %% A node that is not attached asks too: refused, and its ask does not count.
        ?assertEqual(Mismatch, start(PeerC, Node, RelayC, New)),
        ?assertMatch(#{controllers := 2, listeners := [{tcp, _, Port}]}, stats(Node)),

        %% A asks for the same: every attached controller has, so the node takes it.
        ?assertMatch({ok, #{listeners := [{tcp, _, NewPort}], max_chunk := _}},
                     start(PeerA, Node, RelayA, New)),
        ?assertMatch(#{controllers := 2, listeners := [{tcp, _, NewPort}]}, stats(Node)),
        ?assertEqual({error, econnrefused}, gen_tcp:connect(?LOCALHOST, Port, [binary], ?WAIT)),
        %% B's retry agrees now, and C joins with it.
        ?assertMatch({ok, _}, start(PeerB, Node, RelayB, New)),
        ?assertMatch({ok, _}, start(PeerC, Node, RelayC, New)),
        ?assertMatch(#{controllers := 3}, stats(Node)),
        %% The connection from before the change is still open.
        ?assertEqual({error, timeout}, gen_tcp:recv(Kept, 0, 200)),
        ?assertMatch(#{connections := 1}, stats(Node)),
        %% Going back takes all three again: one alone is refused.
        ?assertEqual({error, {config_mismatch, [listen, max_chunk]}}, start(PeerB, Node, RelayB, Opts)),
        ?assertMatch(#{listeners := [{tcp, _, NewPort}]}, stats(Node))
    after
        catch peer:stop(PeerA),
        catch peer:stop(PeerB),
        catch peer:stop(PeerC)
    end.

frozen_controller(#{node := Node, cookie := Cookie}) ->
    {A, PeerA, RelayA} = controller_node(Node, Cookie),
    {B, PeerB, RelayB} = controller_node(Node, Cookie),
    OsPidA = peer:call(PeerA, os, getpid, []),
    try
        Opts = [{listen, [{tcp, ?LOCALHOST, 0}]}, {balance, round_robin}, {announce_timeout, infinity}],
        {ok, #{listeners := [{tcp, _, Port}]}} = start(PeerA, Node, RelayA, Opts),
        {ok, _} = start(PeerB, Node, RelayB, Opts),
        %% Enough connections of A, each armed for one 64 KiB chunk, to fill
        %% the kernel buffers towards A and then the shared budget many times.
        Clients = [connect(Port) || _ <- lists:seq(1, 2 * ?FROZEN_CLIENTS)],
        [ok = get_data(PeerA, Node, RelayA, Id) || {_, Owner, Id} <- Clients, Owner == A],
        [ok = get_data(PeerB, Node, RelayB, Id) || {_, Owner, Id} <- Clients, Owner == B],
        %% Every get_data has reached the node before A freezes (one
        %% connection from A, in order).
        {ok, _} = peer:call(PeerA, megaphone, stats, [Node], ?WAIT),
        kill("-STOP", OsPidA),
        try
            Chunk = binary:copy(<<"x">>, 65536),
            [ok = gen_tcp:send(C, Chunk) || {C, Owner, _} <- Clients, Owner == A],
            %% The node notices that A takes nothing.
            megaphone_test_client:poll(fun() -> maps:get(nodes_behind, stats(Node)) == 1 end, 20000),
            %% B's clients are read and relayed all the same, long before
            %% net_ticktime would drop A.
            [begin
                 ok = gen_tcp:send(C, <<"ping">>),
                 ?assertEqual({tcp, Id, <<"ping">>}, relayed_data(B, Id))
             end || {C, Owner, Id} <- Clients, Owner == B],
            ?assertMatch(#{controllers := 2}, stats(Node))
        after
            kill("-CONT", OsPidA)
        end,
        %% A catches up once it runs again.
        megaphone_test_client:poll(fun() -> maps:get(nodes_behind, stats(Node)) == 0 end, 20000)
    after
        catch peer:stop(PeerA),
        catch peer:stop(PeerB)
    end.

kill(Signal, OsPid) ->
    "" = os:cmd("kill " ++ Signal ++ " " ++ OsPid),
    ok.

%%====================================================================
%% Peers and relays
%%====================================================================

%% A peer node that can reach the Megaphone node, and a relay on it.
controller_node(Node, Cookie) ->
    Name = list_to_atom("megaphone_ctl_" ++ integer_to_list(erlang:unique_integer([positive]))),
    Paths = lists:usort([filename:dirname(code:which(M)) || M <- [megaphone, ?MODULE]]),
    {ok, Peer, PeerNode} =
        peer:start(#{name => Name, connection => standard_io,
                     args => ["-setcookie", atom_to_list(erlang:get_cookie())]
                         ++ lists:append([["-pa", P] || P <- Paths])}),
    true = peer:call(Peer, erlang, set_cookie, [Node, Cookie]),
    Relay = peer:call(Peer, ?MODULE, spawn_relay, [self()]),
    {PeerNode, Peer, Relay}.

%% @private A controller that forwards everything to `To'.
-spec spawn_relay(pid()) -> pid().
spawn_relay(To) ->
    spawn(fun() -> relay(To) end).

%% Like a session, it asks for the next chunk as soon as one arrives.
relay(To) ->
    receive
        {tcp, ConnId, _} = Msg ->
            {megaphone, node(ConnId)} ! {get_data, self(), ConnId},
            To ! {relay, node(), Msg};
        Msg ->
            To ! {relay, node(), Msg}
    end,
    relay(To).

start(Peer, Node, Relay, Opts) ->
    peer:call(Peer, megaphone, start, [Node, [{controller, Relay} | Opts]], ?WAIT).

%% The relay becomes the connection's owner (what a session does).
get_data(Peer, Node, Relay, ConnId) ->
    peer:call(Peer, erlang, send, [{megaphone, Node}, {get_data, Relay, ConnId}], ?WAIT),
    ok.

stats(Node) ->
    megaphone_test_client:stats(Node).

%% A client, the node its connection was announced to, and its ConnId.
connect(Port) ->
    {ok, Client} = megaphone_test_client:connect(Port),
    {ok, {_, ClientPort}} = inet:sockname(Client),
    receive
        {relay, Owner, {megaphone_connect, _, ConnId, {?LOCALHOST, ClientPort}, _, tcp}} ->
            {Client, Owner, ConnId}
    after ?WAIT ->
            erlang:error(no_megaphone_connect)
    end.

%% The next `{tcp, ConnId, Data}' or `{tcp_closed, ConnId}' relayed from `From'.
relayed_data(From, ConnId) ->
    receive {relay, From, {tcp, ConnId, _} = Msg} -> Msg after ?WAIT -> erlang:error({no_data, From, ConnId}) end.

relayed_closed(From, ConnId) ->
    receive {relay, From, {tcp_closed, ConnId} = Msg} -> Msg after ?WAIT -> erlang:error({not_closed, From, ConnId}) end.
