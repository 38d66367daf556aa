%%%----------------------------------------------------------------------
%%% File    : megaphone_tests.erl
%%% Purpose : Integration tests of megaphone.erl against the real Swift node
%%%----------------------------------------------------------------------

%% @doc Integration tests of the client API against the real `megaphone'
%% binary, with real `gen_tcp' clients on loopback.
%%
%% Every test gets a fresh node (`foreach'), so counters start at zero and
%% options such as `max_connections' touch no other test. The test process
%% calls `megaphone:start/2' itself and so is the controller: it gets
%% `megaphone_connect', and `tcp_closed' for connections nobody owns.
%% See megaphone_test_node for where the binary comes from.
-module(megaphone_tests).

-include_lib("eunit/include/eunit.hrl").

-import(megaphone_test_client, [poll/2, read_until_closed/2, deadline/1, remaining/1]).

-define(LOCALHOST, {127, 0, 0, 1}).
-define(MAX_CHUNK, 16).
-define(OPTS, [{listen, [{tcp, ?LOCALHOST, 0}]}, {max_chunk, ?MAX_CHUNK}]).
%% How long anything expected may take to arrive.
-define(WAIT, 5000).
%% How long we watch that something does NOT arrive.
-define(QUIET, 300).
-define(TEST_TIMEOUT, 60).

%% Receives the first message that matches Pattern, or fails after Timeout
%% with the mailbox. The fun keeps variables bound by Pattern to itself: use
%% `_' for the parts to learn, and match the returned message.
-define(RECV(Pattern, Timeout),
        (fun() ->
                 receive
                     Pattern = Msg__ -> Msg__
                 after Timeout ->
                         erlang:error({no_message, ??Pattern, {mailbox, mailbox()}})
                 end
         end)()).

%% Fails if a message that matches Pattern arrives within Timeout.
-define(NO_MSG(Pattern, Timeout),
        (fun() ->
                 receive
                     Pattern = Msg__ -> erlang:error({unexpected_message, Msg__})
                 after Timeout ->
                         ok
                 end
         end)()).

%%====================================================================
%% Tests
%%====================================================================

%% A missing binary is a failure, not a skip.
binary_exists_test() ->
    ?assert(is_list(megaphone_test_node:check_binary())).

%% Two reactors on threads of their own (the default is one on machines of
%% up to 7 cores, so it is asked for: the threaded loop must stay tested).
megaphone_test_() ->
    {foreach, fun() -> megaphone_test_node:start(["--threads", "2"]) end, fun megaphone_test_node:cleanup/1, cases()}.

%% The same cases against a node whose one reactor runs on the
%% distribution thread (`--threads 1'), a different event loop.
megaphone_inline_test_() ->
    {foreach, fun() -> megaphone_test_node:start(["--threads", "1"]) end, fun megaphone_test_node:cleanup/1, cases()}.

cases() ->
     [instance("start returns a real port and is idempotent", fun start_is_idempotent/1),
      instance("the node is hidden", fun node_is_hidden/1),
      instance("megaphone_connect reaches the controller", fun connect_reaches_controller/1),
      instance("get_data delivers one chunk of at most max_chunk", fun get_data_is_active_once/1),
      instance("put_data injects input, iolists too", fun put_data_injects_input/1),
      instance("send_data reaches the client; close flushes first", fun send_data_and_close/1),
      instance("a client disconnect reaches the owner", fun client_disconnect_reaches_owner/1),
      instance("bytes sent before a hang-up are delivered, then tcp_closed",
               fun hangup_with_unread_input/1),
      instance("stats counts connections and bytes", fun stats_count/1),
      instance("malformed requests get megaphone_error", fun malformed_requests/1),
      instance("max_connections closes the extra client", fun max_connections/1),
      instance("send_queue_limit closes a client that does not read", fun send_queue_limit/1),
      instance("a wrong cookie cannot connect", fun wrong_cookie/1),
      instance("shutdown closes every connection and exits 0", fun shutdown_closes_all/1),
      instance("the bare {shutdown} exits 0", fun bare_shutdown/1)].

%%====================================================================
%% Fixture
%%====================================================================

instance(Title, Test) ->
    megaphone_test_node:instance(Title, Test, ?TEST_TIMEOUT).

%%====================================================================
%% Test bodies
%%====================================================================

start_is_idempotent(#{node := Node}) ->
    {ok, Info} = megaphone:start(Node, ?OPTS),
    ?assertMatch(#{listeners := [{tcp, ?LOCALHOST, _}]}, Info),
    #{listeners := [{tcp, _, Port}]} = Info,
    ?assert(is_integer(Port) andalso Port > 0),
    {_, _} = accept(Port),
    %% The same options again: the same listener, still serving.
    ?assertEqual({ok, Info}, megaphone:start(Node, ?OPTS)),
    {_, _} = accept(Port),
    ?NO_MSG({megaphone_connect, _, _, _, _, _}, ?QUIET).

node_is_hidden(#{node := Node}) ->
    ?assert(lists:member(Node, nodes(hidden))),
    ?assertNot(lists:member(Node, nodes())).

connect_reaches_controller(#{node := Node}) ->
    Port = listen(Node),
    {ok, Client} = connect(Port),
    {ok, {_, ClientPort}} = inet:sockname(Client),
    Msg = ?RECV({megaphone_connect, _, _, _, _, _}, ?WAIT),
    {megaphone_connect, NodePid, ConnId, Peer, Local, Transport} = Msg,
    ?assert(is_pid(NodePid)),
    ?assertEqual(Node, node(NodePid)),
    %% A reference of the node: it names the node, and no other connection.
    ?assert(is_reference(ConnId)),
    ?assertEqual(Node, node(ConnId)),
    ?assertEqual({?LOCALHOST, ClientPort}, Peer),
    ?assertEqual({?LOCALHOST, Port}, Local),
    ?assertEqual(tcp, Transport).

get_data_is_active_once(#{node := Node}) ->
    Port = listen(Node),
    Payload = list_to_binary(lists:seq(1, 100)),
    {ok, Client} = connect(Port),
    %% Sent before any get_data: held, not lost, and not pushed to us.
    ok = gen_tcp:send(Client, Payload),
    ConnId = await_connect(Client),
    ?NO_MSG({tcp, ConnId, _}, ?QUIET),
    ok = megaphone:get_data(Node, ConnId),
    {tcp, _, First} = ?RECV({tcp, ConnId, _}, ?WAIT),
    ?assertEqual(?MAX_CHUNK, byte_size(First)),
    %% One chunk per get_data.
    ?NO_MSG({tcp, ConnId, _}, ?QUIET),
    Rest = read_bytes(Node, ConnId, byte_size(Payload) - ?MAX_CHUNK),
    ?assertEqual(Payload, <<First/binary, Rest/binary>>).

%% The ordering rule tested: bytes come out in the order they entered the
%% connection's input. Injected bytes the node has taken (here: before it
%% answers a later stats request from the same process) come before socket
%% bytes it reads after that.
put_data_injects_input(#{node := Node}) ->
    Port = listen(Node),
    {Client, ConnId} = accept(Port),
    ok = megaphone:put_data(Node, ConnId, <<"AB">>),
    %% The node handles one sender's messages in order: once stats answers,
    %% "AB" is in the connection's input, ahead of anything the client sends.
    {ok, _} = megaphone:stats(Node),
    ok = gen_tcp:send(Client, <<"cd">>),
    ?assertEqual(<<"ABcd">>, read_bytes(Node, ConnId, 4)),
    ok = megaphone:put_data(Node, ConnId, ["a", <<"b">>, [$c]]),
    ?assertEqual(<<"abc">>, read_bytes(Node, ConnId, 3)),
    ?NO_MSG({tcp, ConnId, _}, ?QUIET).

send_data_and_close(#{node := Node}) ->
    %% A limit far above what is queued below, whatever the default.
    {ok, #{listeners := [{tcp, _, Port}]}} =
        megaphone:start(Node, ?OPTS ++ [{send_queue_limit, 64 * 1024 * 1024}]),
    {Client, ConnId} = accept(Port),
    ok = megaphone:send_data(Node, ConnId, <<"hello">>),
    ?assertEqual({ok, <<"hello">>}, gen_tcp:recv(Client, 5, ?WAIT)),
    ok = megaphone:send_data(Node, ConnId, ["wor", <<"ld">>, [$!]]),
    ?assertEqual({ok, <<"world!">>}, gen_tcp:recv(Client, 6, ?WAIT)),
    %% 8 MiB while the client is not reading: more than the kernel buffers
    %% hold, so most of it is still queued in the node when close arrives.
    Chunks = [<<I:32, (binary:copy(<<I>>, 65532))/binary>> || I <- lists:seq(0, 127)],
    _ = [ok = megaphone:send_data(Node, ConnId, Chunk) || Chunk <- Chunks],
    ok = megaphone:close(Node, ConnId),
    {Received, End} = read_until_closed(Client, deadline(30000)),
    ?assertEqual(closed, End),
    Expected = iolist_to_binary(Chunks),
    ?assertEqual(byte_size(Expected), byte_size(Received)),
    %% Not assertEqual: it would print 8 MiB.
    ?assert(Expected =:= Received).

client_disconnect_reaches_owner(#{node := Node}) ->
    Port = listen(Node),
    {Client, ConnId} = accept(Port),
    %% Another process owns the connection: tcp_closed goes to the owner.
    Owner = spawn_owner(Node, ConnId),
    ok = gen_tcp:send(Client, <<"x">>),
    %% Its one get_data is used up: none is outstanding from here on.
    ?RECV({owner_got, Owner, <<"x">>}, ?WAIT),
    ok = gen_tcp:close(Client),
    ?RECV({owner_closed, Owner, ConnId}, ?WAIT),
    ?NO_MSG({tcp_closed, ConnId}, ?QUIET).

%% As gen_tcp in {active, once} mode: what the client sent before it hung up
%% is still delivered, one chunk per get_data, and tcp_closed follows the last
%% chunk at once. Nothing arrives before the owner asks. Our side stays open
%% for the owner's answer until it closes (as a c2s does on tcp_closed).
hangup_with_unread_input(#{node := Node}) ->
    Port = listen(Node),
    {Client, ConnId} = accept(Port),
    ok = gen_tcp:send(Client, <<"last words before leaving">>),
    ok = gen_tcp:close(Client),
    ?NO_MSG({tcp_closed, ConnId}, ?QUIET),
    ?assertEqual(<<"last words before leaving">>, read_bytes(Node, ConnId, 25)),
    ?RECV({tcp_closed, ConnId}, ?WAIT),
    ?assertMatch({ok, #{connections := 1}}, megaphone:stats(Node)),
    ok = megaphone:close(Node, ConnId),
    poll(fun() -> {ok, S} = megaphone:stats(Node), maps:get(connections, S) =:= 0 end, ?WAIT),
    {ok, #{connections := 0, closed := #{client_closed := 1, requested := 0}}} = megaphone:stats(Node).

stats_count(#{node := Node}) ->
    Port = listen(Node),
    {ok, Stats0} = megaphone:stats(Node),
    ?assertMatch(#{connections := 0, accepted := 0, bytes_in := 0, bytes_out := 0}, Stats0),
    {Client, ConnId} = accept(Port),
    ok = gen_tcp:send(Client, <<"0123456789">>),
    ?assertEqual(<<"0123456789">>, read_bytes(Node, ConnId, 10)),
    ok = megaphone:send_data(Node, ConnId, <<"abcdefg">>),
    ?assertEqual({ok, <<"abcdefg">>}, gen_tcp:recv(Client, 7, ?WAIT)),
    %% The counters are bumped by the reactor thread right after its write, so
    %% the client may hold the bytes a moment before stats shows them.
    Stats1 = poll(fun() ->
                          {ok, S} = megaphone:stats(Node),
                          maps:get(bytes_out, S) >= 7 andalso S
                  end, ?WAIT),
    ?assertMatch(#{connections := 1, accepted := 1, bytes_in := 10, bytes_out := 7}, Stats1),
    ok = gen_tcp:close(Client),
    ?RECV({tcp_closed, ConnId}, ?WAIT),
    ok = megaphone:close(Node, ConnId),
    Stats2 = poll(fun() ->
                          {ok, S} = megaphone:stats(Node),
                          maps:get(connections, S) =:= 0 andalso S
                  end, ?WAIT),
    ?assertMatch(#{connections := 0, accepted := 1, bytes_in := 10, bytes_out := 7}, Stats2).

malformed_requests(#{node := Node}) ->
    Port = listen(Node),
    {_Client, ConnId} = accept(Port),
    Megaphone = {megaphone, Node},
    %% No usable From in the term: the reply goes to the sender.
    Megaphone ! {get_data, notapid, x},
    ?RECV({megaphone_error, _, _}, ?WAIT),
    Megaphone ! {foo, bar},
    ?RECV({megaphone_error, _, _}, ?WAIT),
    Megaphone ! not_a_tuple,
    ?RECV({megaphone_error, _, _}, ?WAIT),
    Megaphone ! {get_data, self(), <<"notint">>},
    ?RECV({megaphone_error, _, _}, ?WAIT),
    %% ConnIds are references: an integer is no ConnId at all.
    Megaphone ! {get_data, self(), 12345678},
    ?RECV({megaphone_error, undefined, {badarg, conn_id}}, ?WAIT),
    %% A reference the node did not give out (here one of this node's own)
    %% names no connection.
    Stranger = make_ref(),
    Megaphone ! {get_data, self(), Stranger},
    ?RECV({megaphone_error, Stranger, unknown_connection}, ?WAIT),
    %% send_data to a connection that is gone is a normal race (a session
    %% writing to a client that just hung up): dropped and counted, no reply.
    Megaphone ! {send_data, Stranger, <<"x">>},
    poll(fun() ->
                 {ok, #{unknown_connection := N}} = megaphone:stats(Node),
                 N >= 1
         end, ?WAIT),
    ?NO_MSG({megaphone_error, Stranger, _}, ?QUIET),
    Megaphone ! {put_data, ConnId, binary:copy(<<0>>, 50 * 1024 * 1024)},
    ?RECV({megaphone_error, ConnId, _}, 30000),
    Ref = make_ref(),
    Megaphone ! {start, self(), Ref, [{listen, bogus}]},
    ?RECV({megaphone_error, Ref, _}, ?WAIT),
    %% Through the API: an address this host does not have (TEST-NET-1).
    ?assertMatch({error, _}, megaphone:start(Node, [{listen, [{tcp, {192, 0, 2, 1}, 0}]}])),
    ?NO_MSG({megaphone_error, _, _}, ?QUIET),
    %% Still serving, on the listener it had.
    {Client2, ConnId2} = accept(Port),
    ok = gen_tcp:send(Client2, <<"alive">>),
    ?assertEqual(<<"alive">>, read_bytes(Node, ConnId2, 5)),
    ok = megaphone:send_data(Node, ConnId2, <<"pong">>),
    ?assertEqual({ok, <<"pong">>}, gen_tcp:recv(Client2, 4, ?WAIT)).

max_connections(#{node := Node}) ->
    {ok, #{listeners := [{tcp, _, Port}]}} =
        megaphone:start(Node, ?OPTS ++ [{max_connections, 2}]),
    {Client1, ConnId1} = accept(Port),
    {_, _} = accept(Port),
    {ok, Third} = connect(Port),
    ?assertEqual({error, closed}, gen_tcp:recv(Third, 0, ?WAIT)),
    ?NO_MSG({megaphone_connect, _, _, _, _, _}, ?QUIET),
    {ok, Stats} = megaphone:stats(Node),
    ?assertMatch(#{connections := 2, closed := #{max_connections := 1}}, Stats),
    %% The first two are untouched.
    ok = megaphone:send_data(Node, ConnId1, <<"still here">>),
    ?assertEqual({ok, <<"still here">>}, gen_tcp:recv(Client1, 10, ?WAIT)).

send_queue_limit(#{node := Node}) ->
    {ok, #{listeners := [{tcp, _, Port}]}} =
        megaphone:start(Node, ?OPTS ++ [{send_queue_limit, 65536}]),
    %% A client that never reads, with a small receive buffer.
    {ok, Client} = gen_tcp:connect(?LOCALHOST, Port,
                                   [binary, {active, false}, {recbuf, 4096}], ?WAIT),
    ConnId = await_connect(Client),
    ok = megaphone:get_data(Node, ConnId),
    Chunk = binary:copy(<<"q">>, 65536),
    {Sent, Reason} = flood(Node, ConnId, Chunk, 0, deadline(30000)),
    ?assertEqual(send_queue_full, Reason),
    ?assert(Sent > 1),
    %% The client gets what is queued and a stream error for up to the flush
    %% timeout (5 s); it reads nothing, so the timeout closes it.
    poll(fun() ->
                 {ok, S} = megaphone:stats(Node),
                 maps:get(connections, S) =:= 0
         end, 2 * ?WAIT),
    ?assertMatch({ok, #{closed := #{send_queue_full := 1, flush_timeout := 0}}}, megaphone:stats(Node)).

%% The fixture connected with the right cookie; drop that link first.
wrong_cookie(#{node := Node, cookie := Cookie}) ->
    true = erlang:disconnect_node(Node),
    poll(fun() -> not lists:member(Node, nodes(hidden)) end, ?WAIT),
    true = erlang:set_cookie(Node, wrong_cookie),
    try
        ?assertEqual(false, net_kernel:connect_node(Node))
    after
        true = erlang:set_cookie(Node, Cookie)
    end,
    %% The node survived the failed handshake.
    poll(fun() -> net_kernel:connect_node(Node) end, ?WAIT),
    ?assertMatch({ok, #{}}, megaphone:stats(Node)).

shutdown_closes_all(Fixture = #{node := Node}) ->
    Port = listen(Node),
    {Client1, ConnId1} = accept(Port),
    {Client2, ConnId2} = accept(Port),
    Owner1 = spawn_owner(Node, ConnId1),
    Owner2 = spawn_owner(Node, ConnId2),
    %% Each owner's get_data left this node before shutdown does, on the same
    %% distribution connection.
    ?RECV({armed, Owner1}, ?WAIT),
    ?RECV({armed, Owner2}, ?WAIT),
    {ok, Stats} = megaphone:shutdown(Node),
    ?assert(is_map(Stats)),
    ?RECV({owner_closed, Owner1, ConnId1}, ?WAIT),
    ?RECV({owner_closed, Owner2, ConnId2}, ?WAIT),
    ?assertEqual({error, closed}, gen_tcp:recv(Client1, 0, ?WAIT)),
    ?assertEqual({error, closed}, gen_tcp:recv(Client2, 0, ?WAIT)),
    ?assertEqual({ok, 0}, megaphone_test_node:wait_exit(Fixture, ?WAIT)),
    ?assertNot(lists:member(Node, nodes(hidden))).

bare_shutdown(Fixture = #{node := Node}) ->
    Port = listen(Node),
    {Client, _} = accept(Port),
    true = erlang:monitor_node(Node, true),
    {megaphone, Node} ! {shutdown},
    ?RECV({nodedown, Node}, 15000),
    ?assertEqual({ok, 0}, megaphone_test_node:wait_exit(Fixture, ?WAIT)),
    ?assertEqual({error, closed}, gen_tcp:recv(Client, 0, ?WAIT)).

%%====================================================================
%% Helpers
%%====================================================================

%% Starts the standard listener with the caller as controller.
listen(Node) ->
    {ok, #{listeners := [{tcp, ?LOCALHOST, Port}]}} = megaphone:start(Node, ?OPTS),
    Port.

connect(Port) ->
    gen_tcp:connect(?LOCALHOST, Port, [binary, {active, false}], ?WAIT).

%% Connects a client and returns it with the ConnId the controller was told.
accept(Port) ->
    {ok, Client} = connect(Port),
    {Client, await_connect(Client)}.

await_connect(Client) ->
    {ok, {_, ClientPort}} = inet:sockname(Client),
    {megaphone_connect, _, ConnId, _, _, _} =
        ?RECV({megaphone_connect, _, _, {?LOCALHOST, ClientPort}, _, _}, ?WAIT),
    ConnId.

%% get_data until N bytes came, checking that no chunk exceeds max_chunk.
read_bytes(Node, ConnId, N) ->
    read_bytes(Node, ConnId, N, <<>>).

read_bytes(_Node, _ConnId, N, Acc) when byte_size(Acc) >= N ->
    ?assertEqual(N, byte_size(Acc)),
    Acc;
read_bytes(Node, ConnId, N, Acc) ->
    ok = megaphone:get_data(Node, ConnId),
    {tcp, _, Chunk} = ?RECV({tcp, ConnId, _}, ?WAIT),
    ?assert(byte_size(Chunk) > 0 andalso byte_size(Chunk) =< ?MAX_CHUNK),
    read_bytes(Node, ConnId, N, <<Acc/binary, Chunk/binary>>).

%% Sends Chunk until the owner (us) hears send_queue_full. Every few chunks
%% a stats round trip lets the node catch up, so that we never run far ahead
%% of it on the distribution link.
flood(Node, ConnId, Chunk, Sent, Deadline) ->
    receive
        {tcp_error, ConnId, Reason} -> {Sent, Reason}
    after 0 ->
            case remaining(Deadline) =:= 0 orelse Sent >= 4096 of
                true ->
                    erlang:error({no_tcp_error, {sent, Sent}, {mailbox, mailbox()}});
                false ->
                    ok = megaphone:send_data(Node, ConnId, Chunk),
                    case Sent rem 8 of
                        7 -> {ok, _} = megaphone:stats(Node);
                        _ -> ok
                    end,
                    flood(Node, ConnId, Chunk, Sent + 1, Deadline)
            end
    end.

%% A process that owns ConnId: it calls get_data once, then reports what it
%% gets until tcp_closed. It gives up after a while, so that it never
%% outlives a failed test for long.
spawn_owner(Node, ConnId) ->
    Test = self(),
    spawn_link(fun() ->
                       ok = megaphone:get_data(Node, ConnId),
                       Test ! {armed, self()},
                       report_as_owner(Test, ConnId)
               end).

report_as_owner(Test, ConnId) ->
    receive
        {tcp, ConnId, Bin} ->
            Test ! {owner_got, self(), Bin},
            report_as_owner(Test, ConnId);
        {tcp_closed, ConnId} ->
            Test ! {owner_closed, self(), ConnId}
    after 20000 ->
            ok
    end.

mailbox() ->
    {messages, Messages} = process_info(self(), messages),
    Messages.
