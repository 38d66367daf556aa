%%%----------------------------------------------------------------------
%%% File    : megaphone_rogue_tests.erl
%%% Purpose : A node with the right cookie sending hostile terms and
%%%           distribution operations to the real Swift node
%%%----------------------------------------------------------------------

%% @doc A rogue Erlang node (this VM, which has the cookie) against the real
%% `megaphone' binary. It sends seeded random terms, every verb with wrong
%% arities and hostile fields (huge binaries, deep nesting, long and odd
%% atoms, pids, refs and ports of other nodes, funs, maps, improper lists,
%% bitstrings), and runs the distribution operations OTP lets one send to a
%% C node (link, unlink, exit signals, monitors, group_leader, spawn, sends
%% to other names and to the node's pid, rpc). Every message that has an
%% answer gets it (a `megaphone_error' where the request is malformed), and
%% afterwards the node still serves: a put_data/get_data round trip on a
%% real client, stats, the same OS process, no more open fds than before.
%% Replay a failing random run with the seed it prints.
-module(megaphone_rogue_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOCALHOST, {127, 0, 0, 1}).
-define(OPTS, [{listen, [{tcp, ?LOCALHOST, 0}]}]).
-define(WAIT, 5000).
-define(QUIET, 300).
-define(TEST_TIMEOUT, 120).
%% Random messages per seed.
-define(RANDOM_TERMS, 1500).
-define(SEEDS, [{1, 2, 3}, {2026, 11, 25}]).

%% Receives the first message that matches Pattern (and Guard), or fails
%% after ?WAIT with the mailbox.
-define(RECV(Pattern), ?RECV_WHEN(Pattern, true)).
-define(RECV_WHEN(Pattern, Guard),
        (fun() ->
                 receive
                     Pattern = Msg__ when Guard -> Msg__
                 after ?WAIT ->
                         erlang:error({no_message, ??Pattern, {mailbox, mailbox()}})
                 end
         end)()).

%%====================================================================
%% Tests
%%====================================================================

rogue_test_() ->
    {foreach, fun megaphone_test_node:start/0, fun megaphone_test_node:cleanup/1,
     [instance("seeded random terms each get their answer", fun random_terms/1),
      instance("every verb with wrong arities and hostile fields", fun hostile_verbs/1),
      instance("huge, deep and odd terms", fun huge_and_deep/1),
      instance("distribution operations other than sends", fun dist_operations/1)]}.

%%====================================================================
%% Fixture
%%====================================================================

instance(Title, Test) ->
    megaphone_test_node:instance(Title, Test, ?TEST_TIMEOUT).

%%====================================================================
%% Test bodies
%%====================================================================

%% Each random message is followed by a stats request: the stats reply
%% proves the node read past it, and the answers it owes (a megaphone_error,
%% or the stats reply of a `stats' with a random Ref, echoed unchanged) must
%% arrive. Answers from the reactors may come after the stats reply.
random_terms(Fixture = #{node := Node}) ->
    Before = baseline(Fixture),
    put(megaphone_node, Node),
    lists:foreach(
      fun(Seed) ->
              _ = rand:seed(exsss, Seed),
              lists:foreach(fun(I) ->
                                    Msg = random_message(),
                                    try exchange(Node, Msg)
                                    catch C:R:S ->
                                            erlang:raise(C, {R, {seed, Seed}, {message, I, Msg}}, S)
                                    end
                            end, lists:seq(1, ?RANDOM_TERMS))
      end, ?SEEDS),
    {ok, #{malformed_requests := Malformed}} = megaphone:stats(Node),
    ?assert(Malformed > ?RANDOM_TERMS),
    still_serving(Fixture, Before).

hostile_verbs(Fixture = #{node := Node}) ->
    Before = baseline(Fixture),
    put(megaphone_node, Node),
    _ = rand:seed(exsss, {7, 7, 7}),
    Verbs = [start, get_data, put_data, send_data, close, shutdown, stats],
    lists:foreach(
      fun(Verb) ->
              lists:foreach(
                fun(Arity) ->
                        lists:foreach(
                          fun(_) ->
                                  Fields = [field() || _ <- lists:seq(2, Arity)],
                                  Msg = list_to_tuple([Verb | Fields]),
                                  exchange(Node, make_safe(Msg))
                          end, lists:seq(1, 20))
                end, lists:seq(1, 6))
      end, Verbs),
    still_serving(Fixture, Before).

huge_and_deep(Fixture = #{node := Node}) ->
    Before = baseline(Fixture),
    Deep = lists:foldl(fun(_, Acc) -> [Acc] end, <<"x">>, lists:seq(1, 100000)),
    DeepTuple = lists:foldl(fun(_, Acc) -> {Acc} end, x, lists:seq(1, 100000)),
    DeepMap = lists:foldl(fun(_, Acc) -> #{k => Acc} end, x, lists:seq(1, 10000)),
    Huge = binary:copy(<<"A">>, 64 * 1024 * 1024),
    LongAtom = list_to_atom(lists:duplicate(255, 16#1F600)),
    Messages =
        [%% Data that is iodata but deep: accepted (send_data to nobody is a counted drop).
         {send_data, 77, Deep},
         {put_data, 77, Deep},
         {get_data, DeepTuple, 1},
         {stats, self(), DeepTuple},
         {stats, self(), DeepMap},
         {start, self(), DeepMap, [{listen, Deep}]},
         {put_data, 77, Huge},
         {send_data, Huge, Huge},
         {LongAtom, self(), make_ref()},
         {start, self(), make_ref(), [{LongAtom, 1}]},
         {stats, self(), LongAtom},
         {start, self(), make_ref(), [{certfile, Huge}]},
         {start, self(), make_ref(), [{listen, [{tcp, any, 0} || _ <- lists:seq(1, 10000)]}, bad]},
         {start, self(), make_ref(), lists:duplicate(100000, {max_chunk, 1}) ++ [bad]},
         {start, self(), make_ref(), [{ciphers, lists:duplicate(5000, $A)}]},
         {start, self(), make_ref(), [{controller, ghost_pid()}, bad]},
         list_to_tuple(lists:duplicate(70000, get_data)),
         lists:seq(1, 70000)],
    lists:foreach(fun(Msg) -> exchange(Node, Msg) end, Messages),
    still_serving(Fixture, Before).

%% What a node can do to a process besides sending to it. None of these has
%% a defined answer from a C node; what must hold is that the node ignores
%% them (or drops only the link they came on, which we then reconnect) and
%% keeps serving.
dist_operations(Fixture = #{node := Node}) ->
    Before = baseline(Fixture),
    %% A link to the node's pid turns a dropped link into an exit signal.
    process_flag(trap_exit, true),
    Port = listen(Node),
    {ok, Client} = connect(Port),
    {megaphone_connect, NodePid, ConnId, _, _, _} = ?RECV({megaphone_connect, _, _, _, _, _}),
    Ops =
        [fun() -> true = link(NodePid), true = unlink(NodePid) end,
         fun() -> true = link(NodePid) end,
         fun() -> exit(NodePid, normal) end,
         fun() -> exit(NodePid, {odd, make_ref(), self()}) end,
         fun() -> exit(NodePid, kill) end,
         fun() -> true = unlink(NodePid) end,
         fun() ->
                 M = erlang:monitor(process, {megaphone, Node}),
                 true = erlang:demonitor(M, [flush])
         end,
         fun() -> M = erlang:monitor(process, NodePid), true = erlang:demonitor(M, [flush]) end,
         fun() -> _ = erlang:monitor(process, {megaphone, Node}) end,
         fun() -> _ = erlang:monitor(process, {nobody, Node}) end,
         fun() -> true = group_leader(self(), NodePid) end,
         fun() -> NodePid ! {stats, self(), via_pid} end,
         fun() -> NodePid ! garbage end,
         fun() -> {nobody, Node} ! {stats, self(), via_other_name} end,
         fun() -> {net_kernel, Node} ! {'$gen_call', {self(), make_ref()}, {is_auth, node()}} end,
         fun() -> {rex, Node} ! {call, erlang, halt, [], self()} end,
         fun() -> {badrpc, _} = rpc:call(Node, erlang, halt, [], 1000) end,
         fun() -> _ = spawn(Node, erlang, halt, []) end,
         fun() -> erlang:send({megaphone, Node}, {close, make_ref()}, [noconnect]) end,
         fun() -> _ = erlang:send_nosuspend({megaphone, Node}, [not_a_request]) end],
    lists:foreach(
      fun(Op) ->
              Op(),
              %% A link dropped by the node (a C node may refuse what it cannot
              %% parse) comes back on the next request; the node itself stays up.
              {ok, _} = stats_with_reconnect(Node)
      end, Ops),
    %% The client connected before all this is still served.
    ok = gen_tcp:send(Client, <<"still">>),
    ok = megaphone:get_data(Node, ConnId),
    ?assertMatch({tcp, ConnId, <<"still">>}, ?RECV({tcp, ConnId, _})),
    ok = gen_tcp:close(Client),
    %% As a c2s does: the node keeps our side open for an answer until then.
    ?RECV({tcp_closed, ConnId}),
    ok = megaphone:close(Node, ConnId),
    still_serving(Fixture, Before),
    process_flag(trap_exit, false).

%%====================================================================
%% The oracle
%%====================================================================

%% Sends Msg, then a stats request, and checks that the answers Msg is owed
%% arrive: the stats reply first (in order on the link), then any owed error.
exchange(Node, Msg) ->
    Expect = expect(Msg),
    {megaphone, Node} ! Msg,
    Ref = make_ref(),
    {megaphone, Node} ! {stats, self(), Ref},
    case Expect of
        {stats, R} ->
            %% Our stats reply and the one Msg asked for, its Ref echoed exactly.
            ?RECV_WHEN({megaphone_stats, R2, _}, R2 =:= R),
            ?RECV_WHEN({megaphone_stats, R3, _}, R3 =:= Ref);
        error ->
            ?RECV_WHEN({megaphone_stats, R2, _}, R2 =:= Ref),
            ?RECV({megaphone_error, _, _});
        none ->
            ?RECV_WHEN({megaphone_stats, R2, _}, R2 =:= Ref)
    end,
    %% Nothing else is owed: anything left now is an answer too many.
    receive
        {megaphone_error, _, _} = Extra -> erlang:error({unexpected, Extra, {message, Msg}})
    after 0 ->
            ok
    end.

%% What the node owes us for Msg, sent by this process through the
%% registered name (so the node knows the sender). `start' and `shutdown'
%% that could succeed are never sent (make_safe/1).
expect({get_data, From, _Id}) when is_pid(From), node(From) =/= node() -> none;
expect({stats, From, Ref}) when From =:= self() -> {stats, Ref};
expect({stats, From, _Ref}) when is_pid(From) -> none;
expect({send_data, Id, Data}) ->
    case is_conn_id(Id) andalso is_iodata(Data) of
        true -> none;
        false -> error
    end;
expect({close, Id}) ->
    case is_conn_id(Id) of
        true -> none;
        false -> error
    end;
expect({start, From, _, _}) when is_pid(From), node(From) =/= node() -> none;
expect({shutdown, From, _}) when is_pid(From), node(From) =/= node() -> none;
expect(_) -> error.

%% A ConnId is a reference; any reference is well-formed (one the node did
%% not give out is an unknown connection).
is_conn_id(Id) -> is_reference(Id).

is_iodata(Data) ->
    try iolist_size(Data) of
        _ -> true
    catch
        error:badarg -> false
    end.

%% Turns the requests that could succeed and change the node (a valid
%% start, any shutdown) into malformed ones.
make_safe({shutdown}) -> {shutdown, garbage, garbage, garbage};
make_safe({shutdown, _, Ref}) -> {shutdown, not_a_pid, Ref};
make_safe({start, From, Ref, Opts}) when is_list(Opts) -> {start, From, Ref, [bad_option | Opts]};
make_safe({start, From, Ref, _}) -> {start, From, Ref, bad_opts};
make_safe(Msg) -> Msg.

%%====================================================================
%% Random terms
%%====================================================================

random_message() ->
    case rand:uniform(4) of
        1 -> term(3);
        2 ->
            Fields = [field() || _ <- lists:seq(1, rand:uniform(5) - 1)],
            make_safe(list_to_tuple([verb() | Fields]));
        _ -> make_safe(well_shaped())
    end.

verb() ->
    pick([start, get_data, put_data, send_data, close, shutdown, stats, atom()]).

%% A request of the right arity with one field possibly wrong.
well_shaped() ->
    Me = self(),
    case rand:uniform(6) of
        1 -> {get_data, maybe(Me), maybe(conn_id())};
        2 -> {put_data, maybe(conn_id()), maybe(iodata(3))};
        3 -> {send_data, maybe(conn_id()), maybe(iodata(3))};
        4 -> {close, maybe(conn_id())};
        5 -> {stats, maybe(Me), term(2)};
        6 -> {start, maybe(Me), term(1), [option() || _ <- lists:seq(1, rand:uniform(3))]}
    end.

maybe(Good) ->
    case rand:uniform(3) of
        1 -> field();
        _ -> Good
    end.

field() ->
    pick([self(), ghost_pid(), make_ref(), ghost_ref(), conn_id(), -1, 1 bsl 64, 1 bsl 200, 1.5,
          iodata(2), term(2), atom(), fun() -> ok end, fun erlang:self/0, <<1:3>>, #{a => self()},
          [1 | 2], [<<"a">> | b], "string", []]).

option() ->
    Name = pick([listen, max_connections, max_chunk, send_queue_limit, input_buffer_limit,
                 controller, certfile, ciphers, tls_min_version, handshake_timeout,
                 max_handshakes_per_ip, atom()]),
    Listener = {pick([tcp, tls, starttls, udp]),
                pick([any, {127, 0, 0, 1}, {1, 2, 3}, {0, 0, 0, 0, 0, 0, 0, 1}, {256, 0, 0, 1}]),
                pick([0, 65536, -1])},
    Value = pick([[Listener], infinity, 0, 1, -5, 1 bsl 70, 'tlsv1.3', "/nonexistent",
                  ghost_pid(), field()]),
    pick([{Name, Value}, {Name}, {Name, Value, extra}, Name]).

%% References of the node's own name with any creation and ID words (what a
%% peer could forge), other nodes' references, and integers (the ConnIds of
%% old, which are no ConnIds now).
conn_id() ->
    pick([make_ref(), ghost_ref(), megaphone_ref(), megaphone_ref(), 0, 256, (1 bsl 64) - 1]).

megaphone_ref() ->
    Name = atom_to_binary(get(megaphone_node)),
    Words = [pick([0, 1, 255, 256, rand:uniform(1 bsl 32) - 1]) || _ <- lists:seq(1, pick([1, 3, 5]))],
    binary_to_term(<<131, 90, (length(Words)):16, 119, (byte_size(Name)), Name/binary,
                     (pick([0, 1, rand:uniform(1 bsl 32) - 1])):32,
                     << <<W:32>> || W <- Words >>/binary>>).

iodata(0) ->
    pick([<<>>, <<"bin">>, "str", []]);
iodata(D) ->
    case rand:uniform(4) of
        1 -> crypto_bytes(rand:uniform(64));
        2 -> [iodata(D - 1) || _ <- lists:seq(1, rand:uniform(4))];
        3 -> [iodata(D - 1) | crypto_bytes(rand:uniform(4))];
        4 -> [rand:uniform(256) - 1, iodata(D - 1)]
    end.

crypto_bytes(N) -> list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, N)]).

term(0) ->
    leaf();
term(D) ->
    case rand:uniform(8) of
        1 -> list_to_tuple([term(D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        2 -> [term(D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)];
        3 -> [term(D - 1) | term(D - 1)];
        4 -> maps:from_list([{term(D - 1), term(D - 1)} || _ <- lists:seq(1, rand:uniform(3) - 1)]);
        _ -> leaf()
    end.

leaf() ->
    pick([atom(), rand:uniform(1000) - 500, 1 bsl rand:uniform(300), -(1 bsl rand:uniform(300)),
          rand:uniform() * 1.0e300, -0.0, crypto_bytes(rand:uniform(16)), bits(),
          self(), ghost_pid(), make_ref(), ghost_ref(), ghost_port(), hd(erlang:ports()),
          fun() -> ok end, fun lists:seq/2, [], "text"]).

atom() ->
    pick([ok, undefined, get_data, 'ÿ', 'σ', '😀', '', list_to_atom(lists:duplicate(255, $a)),
          list_to_atom(lists:duplicate(255, 16#10FFFF)), list_to_atom([0, 10, 13])]).

%% A bitstring that is not a binary.
bits() ->
    N = rand:uniform(7),
    <<7:N>>.

pick(List) -> lists:nth(rand:uniform(length(List)), List).

%% A pid, ref and port of a node that does not exist (never connected).
ghost_pid() ->
    binary_to_term(<<131, 88, 119, 13, "ghost@nowhere", 1:32, 0:32, 7:32>>).

ghost_ref() ->
    binary_to_term(<<131, 90, 3:16, 119, 13, "ghost@nowhere", 7:32, 1:32, 2:32, 3:32>>).

ghost_port() ->
    binary_to_term(<<131, 89, 119, 13, "ghost@nowhere", 5:32, 7:32>>).

%%====================================================================
%% Still serving
%%====================================================================

%% What the node looked like before: its OS pid and open fds.
baseline(#{os_pid := OsPid}) ->
    #{os_pid => OsPid, fds => fd_count(OsPid)}.

%% The node still serves: same OS process, a real client's bytes injected
%% with put_data come back through get_data, stats answers, and the fds it
%% holds return to the baseline once that client is gone.
still_serving(Fixture = #{node := Node}, #{os_pid := OsPid, fds := Fds}) ->
    ?assertEqual(OsPid, maps:get(os_pid, Fixture)),
    ?assert(filelib:is_dir("/proc/" ++ integer_to_list(OsPid))),
    flush(),
    Port = listen(Node),
    {ok, Client} = connect(Port),
    {megaphone_connect, _, ConnId, _, _, _} = ?RECV({megaphone_connect, _, _, _, _, _}),
    {megaphone, Node} ! {put_data, ConnId, [<<"round">>, "trip"]},
    ok = megaphone:get_data(Node, ConnId),
    ?assertMatch({tcp, ConnId, <<"roundtrip">>}, ?RECV({tcp, ConnId, _})),
    ok = megaphone:send_data(Node, ConnId, <<"back">>),
    ?assertEqual({ok, <<"back">>}, gen_tcp:recv(Client, 4, ?WAIT)),
    {ok, #{connections := 1}} = megaphone:stats(Node),
    ok = gen_tcp:close(Client),
    ?RECV({tcp_closed, ConnId}),
    ok = megaphone:close(Node, ConnId),
    %% The listener is the one fd we added on purpose.
    poll(fun() -> fd_count(OsPid) =< Fds + 1 end, ?WAIT).

fd_count(OsPid) ->
    {ok, Fds} = file:list_dir("/proc/" ++ integer_to_list(OsPid) ++ "/fd"),
    length(Fds).

stats_with_reconnect(Node) ->
    case megaphone:stats(Node) of
        {ok, _} = Ok ->
            Ok;
        _ ->
            true = net_kernel:connect_node(Node),
            megaphone:stats(Node)
    end.

%%====================================================================
%% Helpers
%%====================================================================

listen(Node) ->
    {ok, #{listeners := [{tcp, ?LOCALHOST, Port}]}} = megaphone:start(Node, ?OPTS),
    Port.

connect(Port) ->
    gen_tcp:connect(?LOCALHOST, Port, [binary, {active, false}], ?WAIT).

flush() ->
    receive _ -> flush() after 0 -> ok end.

poll(Fun, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    poll_until(Fun, Deadline).

poll_until(Fun, Deadline) ->
    case Fun() of
        true ->
            ok;
        false ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> erlang:error({poll_timeout, Fun});
                false -> receive after 20 -> poll_until(Fun, Deadline) end
            end
    end.

mailbox() ->
    {messages, Messages} = process_info(self(), messages),
    Messages.
