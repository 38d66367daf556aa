%%%----------------------------------------------------------------------
%%% File    : megaphone_limits_tests.erl
%%% Purpose : Limits at the edge and backpressure, against the real Swift node
%%%----------------------------------------------------------------------

%% @doc The node's limits and backpressure, with real `gen_tcp' clients on
%% loopback against the real binary: `max_connections_per_ip',
%% `connection_rate_per_ip', `stream_header_timeout', a client that never
%% reads while a gigabyte is pushed at it, and a client that floods while
%% nobody asks for its data. The last two watch the node's RSS
%% (/proc/PID/status VmRSS) and keep another client chatting meanwhile.
%%
%% Each test gets a fresh node (`foreach'): counters start at zero.
-module(megaphone_limits_tests).

-include_lib("eunit/include/eunit.hrl").

-import(megaphone_test_client, [start/2, stats/1, connect/1, accept/1, await_connect/1,
                                recv_data/1, recv_closed/1, read_until_closed/2, rss_kb/1,
                                poll/2, deadline/1, remaining/1]).

-define(LOCALHOST, {127, 0, 0, 1}).
-define(WAIT, 5000).
-define(TEST_TIMEOUT, 120).
%% What the node may grow by, over its RSS before the flood, while a flood
%% runs. The send queue limit is 1 MiB and the kernel holds the rest; the
%% margin is for allocator slack and the distribution buffers.
-define(RSS_BOUND_KB, 64 * 1024).
-define(GIGABYTE, (1 bsl 30)).
-define(CHUNK, 65536).

-define(STREAM_HEADER,
        <<"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>">>).

limits_test_() ->
    {foreach, fun megaphone_test_node:start/0, fun megaphone_test_node:cleanup/1,
     [instance("max_connections_per_ip refuses and counts the extra client", fun per_ip/1),
      instance("connection_rate_per_ip refuses a burst, then lets in again", fun rate/1),
      instance("stream_header_timeout closes a silent client with a stream error",
               fun header_timeout/1),
      instance("1 GB pushed at a client that never reads: capped queue, stream error, RSS bounded",
               fun never_reads/1),
      instance("a client that floods while nobody reads is held back by TCP; RSS bounded",
               fun floods/1)]}.

%% With a 64 KiB --dist-queue-limit the put_data/send_data bytes waiting for
%% the reactors reach the limit again and again. Reactors on threads of their
%% own (`--threads 2'): an inline reactor carries out requests in the turn
%% that read them, so they never wait and reads never pause.
request_budget_test_() ->
    {setup, fun() -> megaphone_test_node:start(["--dist-queue-limit", "65536", "--threads", "2"]) end,
     fun megaphone_test_node:cleanup/1,
     megaphone_test_node:instance(
       "send_data past the request budget: reads pause and resume at once, nothing lost",
       fun request_budget/1, ?TEST_TIMEOUT)}.

instance(Title, Test) ->
    megaphone_test_node:instance(Title, Test, ?TEST_TIMEOUT).

%%====================================================================
%% Test bodies
%%====================================================================

%% 32 MiB of send_data in 16 KiB pieces through a 64 KiB request budget: the
%% distribution thread stops reading requests each time the reactors are
%% behind, and must take up again as soon as they catch up (the reactor
%% whose take makes room wakes it). A lost wake-up costs a second of the
%% node's idle poll per pause, hundreds of seconds here; every byte must
%% arrive, in order, well within the test's time.
request_budget(#{node := Node}) ->
    Port = start(Node, [{send_queue_limit, 64 * 1024 * 1024}]),
    {Client, ConnId} = accept(Port),
    Piece = binary:copy(<<"0123456789abcdef">>, 1024),
    Pieces = 2048,
    T0 = erlang:monotonic_time(millisecond),
    Reader = self(),
    spawn_link(fun() -> push(Node, ConnId, Piece, Pieces), Reader ! pushed end),
    Got = read_exactly(Client, Pieces * byte_size(Piece), deadline(60000)),
    Took = erlang:monotonic_time(millisecond) - T0,
    receive pushed -> ok after ?WAIT -> erlang:error(push_not_done) end,
    ?assertEqual(binary:copy(Piece, Pieces), Got),
    #{request_reads_paused := Paused, request_queue_peak := Peak} = stats(Node),
    io:format(user, "~n32 MiB through a 64 KiB request budget: ~b ms, reads paused ~b times, "
              "peak ~b bytes~n", [Took, Paused, Peak]),
    ?assert(Paused > 0),
    ?assert(Took < 30000),
    gen_tcp:close(Client).

per_ip(#{node := Node}) ->
    Port = start(Node, [{max_connections_per_ip, 2}]),
    {C1, _} = accept(Port),
    {C2, Id2} = accept(Port),
    %% The third is accepted by the kernel, then closed by the node unannounced.
    {ok, C3} = connect(Port),
    ?assertEqual({error, closed}, gen_tcp:recv(C3, 0, ?WAIT)),
    ?assertMatch(#{connections := 2, closed := #{max_connections_per_ip := 1}}, stats(Node)),
    %% A slot freed is a slot to take.
    ok = gen_tcp:close(C2),
    ?assertMatch({tcp_closed, Id2}, recv_closed(Id2)),
    %% As a c2s does: the node keeps our side open for an answer until then.
    ok = megaphone:close(Node, Id2),
    poll(fun() -> maps:get(connections, stats(Node)) =:= 1 end, ?WAIT),
    {C4, _} = accept(Port),
    ?assertEqual({error, timeout}, gen_tcp:recv(C4, 0, 200)),
    [gen_tcp:close(C) || C <- [C1, C3, C4]].

rate(#{node := Node}) ->
    %% Three at once, then one every 500 ms.
    Port = start(Node, [{connection_rate_per_ip, {3, 1500}}]),
    Admitted = [accept(Port) || _ <- lists:seq(1, 3)],
    {ok, C4} = connect(Port),
    ?assertEqual({error, closed}, gen_tcp:recv(C4, 0, ?WAIT)),
    ?assertMatch(#{connections := 3, closed := #{connection_rate_per_ip := 1}}, stats(Node)),
    %% Open connections do not matter, only attempts: closing does not help.
    [gen_tcp:close(C) || {C, _} <- Admitted],
    %% A token comes back within 500 ms.
    {C5, _} = poll(fun() ->
                           {ok, C} = connect(Port),
                           case gen_tcp:recv(C, 0, 100) of
                               {error, timeout} -> {C, ok};
                               {error, closed} -> false
                           end
                   end, 2000),
    gen_tcp:close(C5),
    gen_tcp:close(C4).

header_timeout(#{node := Node}) ->
    Port = start(Node, [{stream_header_timeout, 500}]),
    %% Silent: asked for data (as a c2s does at once), never sends a byte.
    {Silent, SilentId} = accept(Port),
    ok = megaphone:get_data(Node, SilentId),
    %% Slow but complete: the header in two parts.
    {Slow, SlowId} = accept(Port),
    ok = megaphone:get_data(Node, SlowId),
    <<Part1:40/binary, Part2/binary>> = ?STREAM_HEADER,
    ok = gen_tcp:send(Slow, Part1),
    ?assertMatch({tcp, SlowId, _}, recv_data(SlowId)),
    ok = megaphone:get_data(Node, SlowId),
    ok = gen_tcp:send(Slow, Part2),
    ?assertMatch({tcp, SlowId, _}, recv_data(SlowId)),
    ok = megaphone:get_data(Node, SlowId),
    %% Not asked for data: the wait is ours, not the client's.
    {Unread, _} = accept(Port),
    {Got, End} = read_until_closed(Silent, deadline(?WAIT)),
    ?assertEqual(closed, End),
    ?assertMatch({match, _}, re:run(Got, "<stream:stream .*<stream:error><connection-timeout ")),
    ?assertMatch({match, _}, re:run(Got, "</stream:stream>$")),
    ?assertMatch({tcp_closed, SilentId}, recv_closed(SilentId)),
    %% Well past the deadline, the other two are still there.
    timer:sleep(700),
    ?assertEqual({error, timeout}, gen_tcp:recv(Slow, 0, 50)),
    ?assertEqual({error, timeout}, gen_tcp:recv(Unread, 0, 50)),
    ?assertMatch(#{connections := 2, closed := #{stream_header_timeout := 1}}, stats(Node)),
    [gen_tcp:close(C) || C <- [Slow, Unread]].

%% The send side: ejabberd (here: this process) keeps sending to a client
%% that reads nothing. The node keeps at most send_queue_limit for it, tells
%% the owner, and ends the client's stream with a policy-violation after the
%% whole chunks it queued; what comes after is dropped.
never_reads(#{node := Node, os_pid := OsPid}) ->
    Port = start(Node, [{send_queue_limit, 1 bsl 20}, {max_chunk, ?CHUNK}]),
    {Chatty, ChattyId} = accept(Port),
    {ok, Deaf} = gen_tcp:connect(?LOCALHOST, Port, [binary, {active, false}, {recbuf, 16384}], ?WAIT),
    DeafId = await_connect(Deaf),
    Baseline = rss_kb(OsPid),
    Sampler = start_sampler(OsPid),
    Chatter = start_chatter(Node, Chatty, ChattyId),
    Chunk = binary:copy(<<"<message>x</message>">>, ?CHUNK div 20),
    Test = self(),
    Pusher = spawn_link(fun() -> push(Node, DeafId, Chunk, ?GIGABYTE div byte_size(Chunk)), Test ! pushed end),
    %% The owner (this process: no get_data was needed) hears at once.
    ?assertMatch({tcp_error, DeafId, send_queue_full}, recv_closed(DeafId)),
    %% The client reads at last: whole chunks, then the stream error.
    {Got, End} = read_until_closed(Deaf, deadline(30000)),
    ?assertEqual(closed, End),
    Error = <<"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
              "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Too much unread data</text>"
              "</stream:error></stream:stream>">>,
    ErrorSize = byte_size(Error),
    ?assertMatch(<<_:(byte_size(Got) - ErrorSize)/binary, Error:ErrorSize/binary>>, Got),
    Data = binary:part(Got, 0, byte_size(Got) - ErrorSize),
    ?assertEqual(0, byte_size(Data) rem byte_size(Chunk)),
    ?assert(byte_size(Data) =< (1 bsl 20) + 4 * 1024 * 1024),  % the queue plus the socket buffers
    receive pushed -> ok after 110000 -> erlang:error({push_not_done, Pusher}) end,
    %% Every request reached the node before this reply.
    Stats = stats(Node),
    Peak = stop_sampler(Sampler),
    Rounds = stop_chatter(Chatter),
    io:format(user, "~nnever_reads: RSS ~b KiB before, peak ~b KiB; ~b chat rounds; "
              "~b send_data dropped after the close~n",
              [Baseline, Peak, Rounds, maps:get(unknown_connection, Stats)]),
    ?assertMatch(#{closed := #{send_queue_full := 1}}, Stats),
    ?assert(maps:get(unknown_connection, Stats) > 0),
    ?assert(Peak - Baseline < ?RSS_BOUND_KB),
    ?assert(Rounds >= 10).

%% The receive side: a client floods while its owner does not ask for data.
%% The node does not read it, so the kernel's buffers fill and the client's
%% send blocks; the node's memory does not move.
floods(#{node := Node, os_pid := OsPid}) ->
    Port = start(Node, [{max_chunk, ?CHUNK}]),
    {Chatty, ChattyId} = accept(Port),
    {ok, Flooder} = gen_tcp:connect(?LOCALHOST, Port, [binary, {active, false}, {send_timeout, 1000}], ?WAIT),
    FloodId = await_connect(Flooder),
    %% One get_data, as a session does on accept; then nobody asks again.
    ok = megaphone:get_data(Node, FloodId),
    Baseline = rss_kb(OsPid),
    Sampler = start_sampler(OsPid),
    Chatter = start_chatter(Node, Chatty, ChattyId),
    Chunk = binary:copy(<<"<message>flood</message>">>, 2731),
    {Sent, Why} = flood(Flooder, Chunk, 0, deadline(60000)),
    ?assertMatch({tcp, FloodId, _}, recv_data(FloodId)),
    %% Held back: far short of the gigabyte, and by a send that timed out.
    ?assertEqual(blocked, Why),
    ?assert(Sent < ?GIGABYTE),
    %% Flow resumes when the owner asks.
    ok = megaphone:get_data(Node, FloodId),
    ?assertMatch({tcp, FloodId, _}, recv_data(FloodId)),
    ?assertMatch(#{connections := 2}, stats(Node)),
    Peak = stop_sampler(Sampler),
    %% The chatter owns its socket: it closes when the chatter ends.
    Rounds = stop_chatter(Chatter),
    io:format(user, "~nfloods: ~b KiB sent before blocking; RSS ~b KiB before, peak ~b KiB; ~b chat rounds~n",
              [Sent div 1024, Baseline, Peak, Rounds]),
    ?assert(Peak - Baseline < ?RSS_BOUND_KB),
    ?assert(Rounds >= 10),
    gen_tcp:close(Flooder).

%%====================================================================
%% Helpers
%%====================================================================

read_exactly(Client, Size, Deadline) ->
    read_exactly(Client, Size, Deadline, []).

read_exactly(_Client, 0, _Deadline, Acc) ->
    iolist_to_binary(lists:reverse(Acc));
read_exactly(Client, Left, Deadline, Acc) ->
    case gen_tcp:recv(Client, 0, remaining(Deadline)) of
        {ok, Data} -> read_exactly(Client, Left - byte_size(Data), Deadline, [Data | Acc]);
        {error, Reason} -> erlang:error({read_failed, Reason, Left})
    end.

%% send_data N chunks as fast as the distribution link takes them.
push(_Node, _ConnId, _Chunk, 0) ->
    ok;
push(Node, ConnId, Chunk, N) ->
    ok = megaphone:send_data(Node, ConnId, Chunk),
    push(Node, ConnId, Chunk, N - 1).

%% Sends until a send times out (blocked), a gigabyte went, or the deadline.
flood(_Client, _Chunk, Sent, _Deadline) when Sent >= ?GIGABYTE ->
    {Sent, gigabyte};
flood(Client, Chunk, Sent, Deadline) ->
    case remaining(Deadline) of
        0 ->
            {Sent, deadline};
        _ ->
            case gen_tcp:send(Client, Chunk) of
                ok -> flood(Client, Chunk, Sent + byte_size(Chunk), Deadline);
                {error, timeout} -> {Sent, blocked};
                {error, Reason} -> {Sent, Reason}
            end
    end.

%% Another client keeps a conversation going through the node: the test
%% sends it "ping", it answers "pong", the test gets it with get_data.
start_chatter(Node, Client, ConnId) ->
    Test = self(),
    Pid = spawn_link(fun() ->
                             receive go -> ok end,
                             chat(Node, Client, ConnId, 0, Test)
                     end),
    ok = gen_tcp:controlling_process(Client, Pid),
    Pid ! go,
    Pid.

chat(Node, Client, ConnId, Rounds, Test) ->
    receive
        {stop, From} -> From ! {rounds, self(), Rounds}
    after 0 ->
            ok = megaphone:send_data(Node, ConnId, <<"ping">>),
            {ok, <<"ping">>} = gen_tcp:recv(Client, 4, ?WAIT),
            ok = gen_tcp:send(Client, <<"pong">>),
            ok = megaphone:get_data(Node, ConnId),
            receive {tcp, ConnId, <<"pong">>} -> ok after ?WAIT -> erlang:error(chat_stalled) end,
            receive after 20 -> ok end,
            chat(Node, Client, ConnId, Rounds + 1, Test)
    end.

stop_chatter(Pid) ->
    Pid ! {stop, self()},
    receive {rounds, Pid, Rounds} -> Rounds after ?WAIT -> erlang:error(chatter_stuck) end.

%% Samples the node's RSS every 20 ms and keeps the peak.
start_sampler(OsPid) ->
    spawn_link(fun() -> sample(OsPid, 0) end).

sample(OsPid, Peak) ->
    receive
        {stop, From} -> From ! {peak, self(), max(Peak, rss_kb(OsPid))}
    after 20 ->
            sample(OsPid, max(Peak, rss_kb(OsPid)))
    end.

stop_sampler(Pid) ->
    Pid ! {stop, self()},
    receive {peak, Pid, Peak} -> Peak after ?WAIT -> erlang:error(sampler_stuck) end.
