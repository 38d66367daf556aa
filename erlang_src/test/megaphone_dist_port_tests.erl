%%%----------------------------------------------------------------------
%%% File    : megaphone_dist_port_tests.erl
%%% Purpose : Nothing on the distribution port stalls the node's clients
%%%----------------------------------------------------------------------

%% @doc The distribution port is advertised by epmd, so anything that can
%% reach it can open a connection and then say nothing, or drip a byte at a
%% time, or (with the cookie) stop reading. None of that may hold the
%% node's other peers or its clients: Erlang handshakes each incoming
%% connection in its own process with a deadline, and so must the node.
%%
%% Each test runs the real binary and measures the round trip of two chat
%% clients (a `gen_tcp' socket, an echo process that does get_data and
%% send_data for it) while the distribution port is abused: every round
%% trip must stay under ?MAX_RTT_MS, far below the seconds a stalled
%% distribution thread costs. ConnIds are opaque terms here.
-module(megaphone_dist_port_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOCALHOST, {127, 0, 0, 1}).
-define(WAIT, 5000).
%% A round trip through the node takes about a millisecond; a stalled
%% distribution thread makes it seconds. Generous for a loaded 2-core box.
-define(MAX_RTT_MS, 200).
%% The node's handshake deadline (Erlang's net_setuptime default).
-define(SETUP_MS, 7000).
%% A slow-drip connection sends one byte this often.
-define(DRIP_MS, 300).
-define(PEER_START_TIMEOUT, 30000).
%% The frozen-peer test's --net-ticktime: long enough that the test VM
%% (net_ticktime 60: a tick every 15 s) is never taken for silent; the
%% frozen peer is dropped after this.
-define(FROZEN_TICKTIME, 20).
-define(BULK_CLIENTS, 16).
-define(BULK_BYTES, 2 * 1024 * 1024).

%%====================================================================
%% Tests
%%====================================================================

probes_test_() ->
    {timeout, 150,
     {"silent and slow-drip connections on the distribution port, one after another and "
      "several at once, stall no client; a new node still connects",
      fun() -> with_node([], fun probes/1) end}}.

interface_test_() ->
    [{"the distribution port listens on 127.0.0.1 by default",
      {timeout, 60, fun() -> with_node([], fun loopback_by_default/1) end}},
     {"--dist-interface 0.0.0.0 listens on every interface",
      {timeout, 60, fun() -> with_node(["--dist-interface", "0.0.0.0"], fun any_interface/1) end}}].

frozen_peer_test_() ->
    {timeout, 120,
     {"a frozen peer whose socket is full stalls no other peer's clients until it is dropped",
      fun() -> with_node(["--net-ticktime", integer_to_list(?FROZEN_TICKTIME)], fun frozen_peer/1) end}}.

%%====================================================================
%% Probes
%%====================================================================

probes(#{node := Node, cookie := Cookie}) ->
    DistPort = dist_port(Node),
    Sampler = start_sampler(Node, 2),
    %% One after the other: silent connections, then slow-drip ones.
    [hold_probe(silent, DistPort, 1500) || _ <- lists:seq(1, 3)],
    [hold_probe(drip, DistPort, 2000) || _ <- lists:seq(1, 3)],
    assert_fast(samples(Sampler), 30),
    %% Several at once, left until the node gives up on them.
    Opened = now_ms(),
    Probes = [open_probe(silent, DistPort) || _ <- lists:seq(1, 6)]
        ++ [open_probe(drip, DistPort) || _ <- lists:seq(1, 6)],
    %% Meanwhile a new Erlang node connects as usual.
    ?assert(new_node_connects(Node, Cookie)),
    Closed = [await_probe_closed(P, Opened + ?SETUP_MS + 10000) || P <- Probes],
    Samples = stop_sampler(Sampler),
    assert_fast(Samples, 100),
    %% The node closed them at its deadline, the slow-drip ones included.
    ?assert(lists:min(Closed) >= ?SETUP_MS - 1000),
    ?assert(lists:max(Closed) =< ?SETUP_MS + 4000),
    %% And refuses nothing legitimate afterwards.
    ?assert(new_node_connects(Node, Cookie)),
    {ok, Stats} = megaphone:stats(Node),
    ?assert(maps:get(dist_handshake_timeouts, Stats) >= 12),
    ?assertEqual(0, maps:get(dist_handshakes_refused, Stats)).

%% A probe: a process that holds a TCP connection to the distribution port,
%% silent or sending a handshake length field and then one byte every
%% ?DRIP_MS, and reports when the node closes it.
open_probe(Kind, Port) ->
    Parent = self(),
    Ref = make_ref(),
    Pid = spawn_link(fun() ->
                             {ok, S} = gen_tcp:connect(?LOCALHOST, Port, [binary, {active, true}], ?WAIT),
                             Opened = now_ms(),
                             Kind =:= drip andalso gen_tcp:send(S, <<0, 32>>),
                             Parent ! {Ref, open},
                             probe_loop(Kind, S, Parent, Ref, Opened)
                     end),
    receive {Ref, open} -> {Pid, Ref} after ?WAIT -> erlang:error(probe_not_open) end.

probe_loop(Kind, S, Parent, Ref, Opened) ->
    Wait = case Kind of drip -> ?DRIP_MS; silent -> infinity end,
    receive
        {tcp_closed, S} ->
            Parent ! {Ref, closed, now_ms() - Opened};
        {tcp, S, _} ->
            probe_loop(Kind, S, Parent, Ref, Opened);
        {Ref, stop} ->
            gen_tcp:close(S),
            Parent ! {Ref, stopped}
    after Wait ->
            case gen_tcp:send(S, <<"n">>) of
                ok -> probe_loop(Kind, S, Parent, Ref, Opened);
                {error, _} -> Parent ! {Ref, closed, now_ms() - Opened}
            end
    end.

%% Holds a probe for Ms (or until the node closes it), then closes it.
hold_probe(Kind, Port, Ms) ->
    {Pid, Ref} = open_probe(Kind, Port),
    receive
        {Ref, closed, _} -> ok
    after Ms ->
            Pid ! {Ref, stop},
            receive
                {Ref, stopped} -> ok;
                {Ref, closed, _} -> ok
            after ?WAIT -> erlang:error(probe_stuck)
            end
    end.

%% Milliseconds from the probe's connect to the node closing it.
await_probe_closed({_Pid, Ref}, Deadline) ->
    receive
        {Ref, closed, Ms} -> Ms
    after max(0, Deadline - now_ms()) ->
            erlang:error({probe_not_closed_by_the_node, ?SETUP_MS})
    end.

%% A fresh `erl' (a peer node, over stdio) connects to the node.
new_node_connects(Node, Cookie) ->
    Name = list_to_atom("megaphone_newnode_" ++ integer_to_list(erlang:unique_integer([positive]))),
    {ok, Peer, _} = peer:start(#{name => Name, connection => standard_io,
                                 args => ["-hidden", "-setcookie", atom_to_list(Cookie)]}),
    try
        peer:call(Peer, net_kernel, connect_node, [Node], 30000)
    after
        peer:stop(Peer)
    end.

%%====================================================================
%% Interface
%%====================================================================

loopback_by_default(#{node := Node}) ->
    Port = dist_port(Node),
    Other = non_loopback_address(),
    Result = gen_tcp:connect(Other, Port, [], ?WAIT),
    case Result of {ok, S0} -> gen_tcp:close(S0); _ -> ok end,
    ?assertEqual({error, econnrefused}, Result),
    {ok, S} = gen_tcp:connect(?LOCALHOST, Port, [], ?WAIT),
    gen_tcp:close(S).

any_interface(#{node := Node}) ->
    Port = dist_port(Node),
    {ok, S} = gen_tcp:connect(non_loopback_address(), Port, [], ?WAIT),
    gen_tcp:close(S).

%% This machine's first IPv4 address outside 127/8.
non_loopback_address() ->
    {ok, Ifs} = inet:getifaddrs(),
    Addrs = [A || {_, Opts} <- Ifs, {addr, {X, _, _, _} = A} <- Opts, X =/= 127],
    case Addrs of
        [A | _] -> A;
        [] -> erlang:error(no_non_loopback_ipv4_address)
    end.

%%====================================================================
%% Frozen peer
%%====================================================================

frozen_peer(Fixture = #{node := Node, cookie := Cookie}) ->
    Peer = start_sink_peer(Node, Cookie),
    try
        frozen_peer(Fixture, Peer)
    after
        stop_peer(Peer)
    end.

frozen_peer(Fixture = #{node := Node}, #{os_pid := OsPid, sink := Sink, node := PeerNode}) ->
    {ok, #{listeners := [{tcp, _, Port}]}} =
        megaphone:start(Node, [{listen, [{tcp, ?LOCALHOST, 0}]}, {max_chunk, 1 bsl 20}]),
    Sampler = start_sampler(Node, Port, 2),
    Bulk = [connect_client(Node, Port) || _ <- lists:seq(1, ?BULK_CLIENTS)],
    kill("-STOP", OsPid),
    Stopped = now_ms(),
    %% The sink owns the bulk connections (get_data names it as From) and
    %% receives all they send; frozen, it reads none of it, and its socket
    %% fills. 32 MiB is far more than the kernel buffers hold.
    Ids = [Id || {_, Id} <- Bulk],
    Feeder = spawn_link(fun() -> feed(Node, Sink, Ids) end),
    _ = [spawn_link(fun() -> pump(S, ?BULK_BYTES) end) || {S, _} <- Bulk],
    Deadline = Stopped + ?FROZEN_TICKTIME * 1000 + 10000,
    wait_until(fun() -> peer_dropped(Fixture, PeerNode) end, Deadline),
    Dropped = now_ms() - Stopped,
    unlink(Feeder),
    exit(Feeder, kill),
    Samples = stop_sampler(Sampler),
    assert_fast(Samples, 100),
    %% Dropped for its silence, not earlier (its buffer is bounded higher).
    ?assert(Dropped >= ?FROZEN_TICKTIME * 750),
    {ok, Stats} = megaphone:stats(Node),
    %% The node read far more for the frozen peer than its socket could
    %% take: the rest waited in user space, not in a blocked send.
    ?assert(maps:get(bytes_in, Stats) >= ?BULK_CLIENTS * ?BULK_BYTES div 2),
    ?assert(maps:get(net_tick_timeouts, Stats) >= 1),
    ?assertEqual("T", os_state(OsPid)).

%% get_data for every bulk connection with the sink as From, every 20 ms:
%% each chunk goes to the frozen sink, and re-arms the connection.
feed(Node, Sink, Ids) ->
    _ = [erlang:send({megaphone, Node}, {get_data, Sink, Id}) || Id <- Ids],
    receive after 20 -> feed(Node, Sink, Ids) end.

pump(S, Bytes) ->
    Block = binary:copy(<<"x">>, 65536),
    pump(S, Block, Bytes).

pump(_S, _Block, Left) when Left =< 0 ->
    ok;
pump(S, Block, Left) ->
    case gen_tcp:send(S, Block) of
        ok -> pump(S, Block, Left - byte_size(Block));
        {error, _} -> ok
    end.

peer_dropped(Fixture, PeerNode) ->
    Name = atom_to_binary(PeerNode, utf8),
    lists:any(fun(Line) ->
                      binary:match(Line, <<"Erlang node disconnected">>) =/= nomatch
                          andalso binary:match(Line, Name) =/= nomatch
              end, megaphone_test_node:output(Fixture)).

%% A real `erl' that connects to the node and runs a process that never
%% reads its mailbox (`sink'); prints its OS pid and the sink's pid.
start_sink_peer(Node, Cookie) ->
    Alive = "megaphone_sink_" ++ integer_to_list(erlang:unique_integer([positive])),
    [_, Host] = string:split(atom_to_list(Node), "@"),
    PeerNode = list_to_atom(Alive ++ "@" ++ Host),
    Eval = lists:flatten(
             io_lib:format(
               "true = net_kernel:connect_node(~p),"
               "Sink = spawn(fun() -> receive after infinity -> ok end end),"
               "io:format(\"peer_ready ~~s ~~s~~n\", [os:getpid(), binary:encode_hex(term_to_binary(Sink))]),"
               "receive after infinity -> ok end.", [Node])),
    Erl = os:find_executable("erl"),
    Port = open_port({spawn_executable, Erl},
                     [{args, ["-sname", Alive, "-hidden", "-setcookie", atom_to_list(Cookie),
                              "-kernel", "net_ticktime", integer_to_list(?FROZEN_TICKTIME),
                              "-noshell", "-noinput", "-eval", Eval]},
                      {line, 4096}, binary, exit_status, stderr_to_stdout]),
    await_peer(Port, PeerNode, now_ms() + ?PEER_START_TIMEOUT, []).

await_peer(Port, PeerNode, Deadline, Lines) ->
    receive
        {Port, {data, {eol, <<"peer_ready ", Rest/binary>>}}} ->
            [OsPid, Sink] = binary:split(Rest, <<" ">>),
            #{port => Port, node => PeerNode, os_pid => binary_to_list(OsPid),
              sink => binary_to_term(binary:decode_hex(Sink))};
        {Port, {data, {_, Line}}} ->
            await_peer(Port, PeerNode, Deadline, [Line | Lines]);
        {Port, {exit_status, Status}} ->
            erlang:error({peer_exited, Status, lists:reverse(Lines)})
    after max(0, Deadline - now_ms()) ->
            catch port_close(Port),
            erlang:error({peer_not_ready, lists:reverse(Lines)})
    end.

stop_peer(#{port := Port, os_pid := OsPid}) ->
    kill("-KILL", OsPid),
    catch port_close(Port),
    ok.

kill(Signal, OsPid) ->
    "" = os:cmd("kill " ++ Signal ++ " " ++ OsPid),
    ok.

%% The process state letter from /proc/PID/stat ("T": stopped).
os_state(OsPid) ->
    {ok, Stat} = file:read_file("/proc/" ++ OsPid ++ "/stat"),
    [_, AfterComm] = binary:split(Stat, <<") ">>),
    [State | _] = binary:split(AfterComm, <<" ">>),
    binary_to_list(State).

%%====================================================================
%% Chat clients and the round-trip sampler
%%====================================================================

%% Starts the node's listener (this process is the controller) and a
%% sampler over N chat clients.
start_sampler(Node, N) ->
    {ok, #{listeners := [{tcp, _, Port}]}} = megaphone:start(Node, [{listen, [{tcp, ?LOCALHOST, 0}]}]),
    start_sampler(Node, Port, N).

%% A process that sends 8 bytes through each chat client in turn, times
%% the echo, and keeps every round trip (ms) until asked.
start_sampler(Node, Port, N) ->
    Clients = [connect_client(Node, Port) || _ <- lists:seq(1, N)],
    _ = [spawn_link(fun() -> echo(Node, Id) end) || {_, Id} <- Clients],
    Sampler = spawn_link(fun() -> sample_loop([S || {S, _} <- Clients], 0, []) end),
    _ = [ok = gen_tcp:controlling_process(S, Sampler) || {S, _} <- Clients],
    %% Only once it has round trips to show: the clients are live.
    wait_until(fun() -> length(samples(Sampler)) >= 2 * N end, now_ms() + 10000),
    Sampler.

%% Connects a client and learns its ConnId from megaphone_connect.
connect_client(_Node, Port) ->
    {ok, S} = gen_tcp:connect(?LOCALHOST, Port, [binary, {active, false}, {nodelay, true}], ?WAIT),
    receive
        {megaphone_connect, _, Id, _, _, tcp} -> {S, Id}
    after ?WAIT ->
            erlang:error(no_megaphone_connect)
    end.

%% Linked to the test, these loops end quietly when the node goes away (a
%% failed test stops it), so that the next tests still run.
echo(Node, Id) ->
    case megaphone:get_data(Node, Id) of
        ok ->
            receive
                {tcp, Id, Bin} ->
                    _ = megaphone:send_data(Node, Id, Bin),
                    echo(Node, Id);
                {tcp_closed, Id} ->
                    ok
            end;
        {error, _} ->
            ok
    end.

sample_loop(Sockets, Seq, Acc) ->
    receive
        {samples, From, Ref} ->
            From ! {Ref, lists:reverse(Acc)},
            sample_loop(Sockets, Seq, Acc);
        {stop, From, Ref} ->
            From ! {Ref, lists:reverse(Acc)}
    after 10 ->
            Rtts = [round_trip(S, Seq) || S <- Sockets],
            case lists:member(closed, Rtts) of
                true -> ok;
                false -> sample_loop(Sockets, Seq + 1, lists:reverse(Rtts, Acc))
            end
    end.

%% Milliseconds, or closed.
round_trip(S, Seq) ->
    T0 = erlang:monotonic_time(microsecond),
    case gen_tcp:send(S, <<Seq:64>>) of
        ok ->
            case gen_tcp:recv(S, 8, 60000) of
                {ok, <<Seq:64>>} -> (erlang:monotonic_time(microsecond) - T0) / 1000;
                _ -> closed
            end;
        {error, _} ->
            closed
    end.

samples(Sampler) ->
    call_sampler(Sampler, samples).

stop_sampler(Sampler) ->
    call_sampler(Sampler, stop).

call_sampler(Sampler, What) ->
    Ref = make_ref(),
    Sampler ! {What, self(), Ref},
    %% A round trip held up by a stalled node may take a while.
    receive {Ref, Samples} -> Samples after 120000 -> erlang:error(sampler_stuck) end.

%% Every round trip so far under ?MAX_RTT_MS, and at least MinCount of them.
assert_fast(Samples, MinCount) ->
    Max = lists:max([0 | Samples]),
    io:format(user, "~n~b round trips, max ~.1f ms~n", [length(Samples), float(Max)]),
    ?assert(Max =< ?MAX_RTT_MS),
    ?assert(length(Samples) >= MinCount).

%%====================================================================
%% Helpers
%%====================================================================

with_node(Args, Test) ->
    Fixture = megaphone_test_node:start(Args),
    try
        megaphone_test_node:with_output(Fixture, fun() -> Test(Fixture) end)
    after
        megaphone_test_node:stop(Fixture)
    end.

%% The node's distribution port, as epmd tells it.
dist_port(Node) ->
    [Alive, Host] = string:split(atom_to_list(Node), "@"),
    {port, Port, _} = erl_epmd:port_please(Alive, Host),
    Port.

wait_until(Fun, Deadline) ->
    case Fun() of
        true ->
            ok;
        false ->
            case now_ms() > Deadline of
                true -> erlang:error(condition_not_reached);
                false -> receive after 50 -> wait_until(Fun, Deadline) end
            end
    end.

now_ms() ->
    erlang:monotonic_time(millisecond).
