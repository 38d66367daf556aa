%%%----------------------------------------------------------------------
%%% File    : megaphone_frozen_peer_tests.erl
%%% Purpose : The node drops an Erlang peer it has not heard from for net_ticktime
%%%----------------------------------------------------------------------

%% @doc A peer node that is SIGSTOPped keeps its TCP connection: its kernel
%% still acknowledges what the Megaphone node sends, so sends never fail.
%% Only silence tells: a live Erlang node sends something (at least a tick)
%% every net_ticktime/4. These tests start a real `erl' as an OS process (the
%% controller: it calls `megaphone:start/2'), stop it with `kill -STOP' by
%% its OS pid while the node keeps sending it `megaphone_connect' for new
%% clients, and check that the node drops it within the bound: its clients
%% closed, its listeners closed, a warning logged. A live but idle peer is
%% kept.
-module(megaphone_frozen_peer_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOCALHOST, {127, 0, 0, 1}).
%% Seconds; the Megaphone node's --net-ticktime and the peer's net_ticktime.
-define(TICKTIME, 3).
%% The peer ticks every TICKTIME/4: the node may drop it from TICKTIME -
%% TICKTIME/4 after the stop, and must by TICKTIME plus one turn of its loop
%% (1 s) plus scheduling slack on a shared machine.
-define(MIN_DETECT_MS, ?TICKTIME * 750 - 250).
-define(MAX_DETECT_MS, ?TICKTIME * 1000 + 2500).
-define(PEER_START_TIMEOUT, 30000).
-define(WAIT, 5000).

frozen_peer_test_() ->
    {timeout, 90,
     {"a SIGSTOPped controller node is dropped within net_ticktime; a live idle one is kept",
      fun frozen_peer_is_dropped/0}}.

frozen_peer_is_dropped() ->
    Fixture = megaphone_test_node:start(["--net-ticktime", integer_to_list(?TICKTIME)]),
    #{node := Node, cookie := Cookie} = Fixture,
    Peer = start_peer(Node, Cookie),
    try
        megaphone_test_node:with_output(Fixture, fun() -> frozen_peer_is_dropped(Fixture, Peer) end)
    after
        stop_peer(Peer),
        megaphone_test_node:stop(Fixture)
    end.

frozen_peer_is_dropped(Fixture, #{os_pid := OsPid, listen_port := Port, node := PeerNode}) ->
    {ok, First} = connect(Port),
    %% Alive and idle for twice the ticktime: its ticks keep it.
    receive
        {tcp_closed, First} -> erlang:error({live_peer_dropped, megaphone_test_node:output(Fixture)})
    after 2 * ?TICKTIME * 1000 ->
            ok
    end,
    kill("-STOP", OsPid),
    Stopped = erlang:monotonic_time(millisecond),
    %% New clients keep the node sending to the frozen peer (megaphone_connect):
    %% those sends succeed, and must not count as life.
    Others = connect_until_closed(First, Port, Stopped + ?MAX_DETECT_MS + 2000, []),
    Detected = erlang:monotonic_time(millisecond) - Stopped,
    ?assert(Detected >= ?MIN_DETECT_MS),
    ?assert(Detected =< ?MAX_DETECT_MS),
    ?assert(length(Others) >= 5),
    [await_closed(S) || S <- Others],
    %% The controller's node is gone: its listeners are closed. The clients are
    %% closed first; a connect that lands while the reactors let go of the
    %% listening socket is reset, so wait (2 s at most) for the refusal.
    ?assertEqual({error, econnrefused}, await_refused(Port, erlang:monotonic_time(millisecond) + 2000)),
    ?assert(lists:any(fun(Line) -> is_drop_line(Line, PeerNode) end,
                      megaphone_test_node:output(Fixture))),
    %% The peer was frozen, not dead: the node did not learn it from a closed socket.
    ?assertEqual("T", os_state(OsPid)).

%% Connects every 50 ms until the port refuses or Deadline passes; the last result.
await_refused(Port, Deadline) ->
    case gen_tcp:connect(?LOCALHOST, Port, [binary], ?WAIT) of
        {error, econnrefused} = Refused ->
            Refused;
        Other ->
            case Other of {ok, S} -> gen_tcp:close(S); _ -> ok end,
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> Other;
                false -> receive after 50 -> await_refused(Port, Deadline) end
            end
    end.

%% Opens a client every 100 ms until First is closed; returns the others.
connect_until_closed(First, Port, Deadline, Acc) ->
    receive
        {tcp_closed, First} -> Acc
    after 100 ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true ->
                    erlang:error({frozen_peer_not_dropped, length(Acc)});
                false ->
                    case connect(Port) of
                        {ok, S} -> connect_until_closed(First, Port, Deadline, [S | Acc]);
                        {error, econnrefused} -> connect_until_closed(First, Port, Deadline, Acc)
                    end
            end
    end.

connect(Port) ->
    gen_tcp:connect(?LOCALHOST, Port, [binary, {active, true}], ?WAIT).

await_closed(Socket) ->
    receive
        {tcp_closed, Socket} -> ok
    after ?WAIT ->
            erlang:error({client_not_closed, Socket})
    end.

is_drop_line(Line, PeerNode) ->
    binary:match(Line, <<"Nothing heard from an Erlang node">>) =/= nomatch
        andalso binary:match(Line, atom_to_binary(PeerNode, utf8)) =/= nomatch.

%%====================================================================
%% The peer: a real erl, an OS process we can stop
%%====================================================================

%% Starts `erl' with the node's cookie and the same short ticktime; it
%% connects, calls megaphone:start/2 (so it is the controller) and prints its
%% OS pid and the listen port.
start_peer(Node, Cookie) ->
    Alive = "megaphone_peer_" ++ integer_to_list(erlang:unique_integer([positive])),
    [_, Host] = string:split(atom_to_list(Node), "@"),
    PeerNode = list_to_atom(Alive ++ "@" ++ Host),
    Ebin = filename:dirname(code:which(megaphone)),
    Eval = lists:flatten(
             io_lib:format(
               "true = net_kernel:connect_node(~p),"
               "{ok, #{listeners := [{tcp, _, P}]}} = "
               "    megaphone:start(~p, [{listen, [{tcp, {127,0,0,1}, 0}]}]),"
               "io:format(\"peer_ready ~~s ~~b~~n\", [os:getpid(), P]),"
               "receive after infinity -> ok end.", [Node, Node])),
    Erl = os:find_executable("erl"),
    Port = open_port({spawn_executable, Erl},
                     [{args, ["-sname", Alive, "-hidden", "-setcookie", atom_to_list(Cookie),
                              "-kernel", "net_ticktime", integer_to_list(?TICKTIME),
                              "-noshell", "-noinput", "-pa", Ebin, "-eval", Eval]},
                      {line, 4096}, binary, exit_status, stderr_to_stdout]),
    await_peer(Port, PeerNode, erlang:monotonic_time(millisecond) + ?PEER_START_TIMEOUT, []).

await_peer(Port, PeerNode, Deadline, Lines) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, {eol, <<"peer_ready ", Rest/binary>>}}} ->
            [OsPid, ListenPort] = binary:split(Rest, <<" ">>),
            #{port => Port, node => PeerNode, os_pid => binary_to_list(OsPid),
              listen_port => binary_to_integer(ListenPort)};
        {Port, {data, {_, Line}}} ->
            await_peer(Port, PeerNode, Deadline, [Line | Lines]);
        {Port, {exit_status, Status}} ->
            erlang:error({peer_exited, Status, lists:reverse(Lines)})
    after Left ->
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
