%%%----------------------------------------------------------------------
%%% File    : megaphone_closing_tests.erl
%%% Purpose : How a client connection ends, against the real Swift node
%%%----------------------------------------------------------------------

%% @doc How a client connection ends, with real `gen_tcp' clients on
%% loopback against the real binary: a client's half-close (its bytes
%% delivered within the limits, then `tcp_closed', with our side still open
%% for the answer), the lingering close (a client still sending when it is
%% refused reads the stream error, not a reset), and `announce_timeout' (a
%% connection announced to a dead controller is closed and counted).
%%
%% This process is the controller and the owner; ConnIds are opaque terms.
%% Each test gets a fresh node (`foreach'): counters start at zero.
-module(megaphone_closing_tests).

-include_lib("eunit/include/eunit.hrl").

-import(megaphone_test_client, [start/2, stats/1, connect/1, accept/1, await_connect/1,
                                recv_data/1, recv_closed/1, read_until_closed/2, rss_kb/1,
                                poll/2, deadline/1, remaining/1]).

-define(LOCALHOST, {127, 0, 0, 1}).
-define(WAIT, 5000).
-define(TEST_TIMEOUT, 120).

-define(STREAM_ERROR,
        <<"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
          "</stream:error></stream:stream>">>).

closing_test_() ->
    {foreach, fun megaphone_test_node:start/0, fun megaphone_test_node:cleanup/1,
     [instance("a half-closed client reads the answer to its </stream:stream>", fun half_close/1),
      instance("half-closed clients that filled their buffers unread do not grow the node's RSS",
               fun half_close_unread/1),
      instance("a client still sending when it is closed reads the stream error, no reset",
               fun lingering_close/1),
      instance("a connection announced to a dead controller is closed at announce_timeout",
               fun dead_controller/1)]}.

instance(Title, Test) ->
    megaphone_test_node:instance(Title, Test, ?TEST_TIMEOUT).

%%====================================================================
%% Test bodies
%%====================================================================

%% The client ends its stream and shuts its side down, as XMPP clients do
%% on logout. The node delivers the trailer, then `tcp_closed'; what the
%% owner answers still reaches the client, and `close' ends it with a FIN.
half_close(#{node := Node}) ->
    Port = start(Node, [{max_chunk, 8}]),
    {Client, Id} = accept(Port),
    ok = gen_tcp:send(Client, <<"</stream:stream>">>),
    ok = gen_tcp:shutdown(Client, write),
    Got = [begin
               ok = megaphone:get_data(Node, Id),
               {tcp, Id, Chunk} = recv_data(Id),
               ?assert(byte_size(Chunk) =< 8),
               Chunk
           end || _ <- [1, 2]],
    ?assertEqual(<<"</stream:stream>">>, iolist_to_binary(Got)),
    ?assertEqual({tcp_closed, Id}, recv_closed(Id)),
    ok = megaphone:send_data(Node, Id, <<"</stream:stream>">>),
    ok = megaphone:close(Node, Id),
    ?assertEqual({<<"</stream:stream>">>, closed}, read_until_closed(Client, deadline(?WAIT))),
    poll(fun() -> maps:get(connections, stats(Node)) =:= 0 end, ?WAIT),
    ?assertMatch(#{closed := #{client_closed := 1, requested := 0}}, stats(Node)),
    %% Told once.
    receive {tcp_closed, Id} = Again -> erlang:error({told_twice, Again}) after 200 -> ok end,
    gen_tcp:close(Client).

%% Many clients fill the node's receive buffers while nobody asks for their
%% data, then half-close. Their bytes stay in the kernel until asked for:
%% the node's RSS does not grow by their sum.
half_close_unread(#{node := Node, os_pid := OsPid}) ->
    Port = start(Node, [{max_chunk, 65536}]),
    N = 300,
    %% Under the initial receive window, so that the FIN gets through at once.
    Size = 50000,
    Payload = binary:copy(<<"x">>, Size),
    Baseline = rss_kb(OsPid),
    Clients = [begin
                   {Client, Id} = accept(Port),
                   ok = gen_tcp:send(Client, Payload),
                   ok = gen_tcp:shutdown(Client, write),
                   {Client, Id}
               end || _ <- lists:seq(1, N)],
    %% Every FIN has reached the node once one client's, sent last, has:
    %% ask the last one for its data, and its tcp_closed comes after it.
    {LastClient, LastId} = lists:last(Clients),
    ok = megaphone:get_data(Node, LastId),
    {tcp, LastId, First} = recv_data(LastId),
    Rest = drain(Node, LastId, byte_size(First)),
    ?assertEqual(Size, Rest),
    Grown = rss_kb(OsPid) - Baseline,
    io:format(user, "~nhalf_close_unread: ~b clients x ~b bytes = ~b KiB; RSS grew ~b KiB~n",
              [N, Size, N * Size div 1024, Grown]),
    %% Only what was asked for was read (the old node read every half-closed
    %% client's rest at its EOF: N * Size).
    ?assertMatch(#{bytes_in := Size}, stats(Node)),
    %% Under AddressSanitizer (scripts/sanitize) RSS also holds shadow memory,
    %% redzones and the quarantine: it says nothing about our buffers there.
    case os:getenv("ASAN_OPTIONS") of
        false -> ?assert(Grown < N * Size div 1024 div 4);
        _ -> ok
    end,
    %% The others still hold their bytes, and give them when asked.
    {OneClient, OneId} = hd(Clients),
    ok = megaphone:get_data(Node, OneId),
    {tcp, OneId, Chunk} = recv_data(OneId),
    ?assertEqual(Size, drain(Node, OneId, byte_size(Chunk))),
    ?assertMatch(#{connections := N}, stats(Node)),
    [gen_tcp:close(C) || {C, _} <- Clients],
    _ = {LastClient, OneClient}.

%% The owner (as ejabberd does with a policy-violation) writes a stream
%% error and closes while the client still sends and the node holds its
%% unread input. The node shuts its side and drains: the client's sends
%% complete, and it reads the error, then EOF.
lingering_close(#{node := Node}) ->
    Port = start(Node, []),
    {ok, Client} = gen_tcp:connect(?LOCALHOST, Port,
                                   [binary, {active, false}, {sndbuf, 32768}], ?WAIT),
    Id = await_connect(Client),
    Test = self(),
    Chunk = binary:copy(<<"<message>flood</message>">>, 640),
    Sender = spawn_link(fun() -> Test ! {sent, self(), send_n(Client, Chunk, 32)} end),
    %% Blocked: the kernel buffers are full and the rest waits in the port.
    poll(fun() ->
                 {ok, [{send_pend, Pending}]} = inet:getstat(Client, [send_pend]),
                 Pending > 0
         end, ?WAIT),
    ok = megaphone:send_data(Node, Id, ?STREAM_ERROR),
    ok = megaphone:close(Node, Id),
    Sent = receive {sent, Sender, Result} -> Result after ?WAIT * 2 -> erlang:error(sender_stuck) end,
    ?assertEqual(ok, Sent),
    ?assertEqual({?STREAM_ERROR, closed}, read_until_closed(Client, deadline(?WAIT))),
    ?assertMatch(#{connections := 0, closed := #{requested := 1}}, stats(Node)),
    gen_tcp:close(Client).

%% The controller pid is dead while its node (this one) stays up, so no
%% nodedown closes what is announced to it: the deadline does.
dead_controller(#{node := Node}) ->
    {Dead, MRef} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', MRef, process, Dead, _} -> ok end,
    Port = start(Node, [{controller, Dead}, {announce_timeout, 500}]),
    {ok, Client} = connect(Port),
    Start = erlang:monotonic_time(millisecond),
    ?assertEqual({error, closed}, gen_tcp:recv(Client, 0, ?WAIT)),
    Took = erlang:monotonic_time(millisecond) - Start,
    ?assert(Took >= 400),
    ?assertMatch(#{connections := 0, closed := #{announce_timeout := 1}}, stats(Node)),
    gen_tcp:close(Client).

%%====================================================================
%% Helpers
%%====================================================================

%% Asks for chunks until tcp_closed; returns how many bytes came in all.
drain(Node, ConnId, Acc) ->
    receive
        {tcp_closed, ConnId} -> Acc
    after 0 ->
            ok = megaphone:get_data(Node, ConnId),
            receive
                {tcp, ConnId, Chunk} -> drain(Node, ConnId, Acc + byte_size(Chunk));
                {tcp_closed, ConnId} -> Acc
            after ?WAIT -> erlang:error({no_data, ConnId})
            end
    end.

send_n(_Client, _Chunk, 0) ->
    ok;
send_n(Client, Chunk, N) ->
    case gen_tcp:send(Client, Chunk) of
        ok -> send_n(Client, Chunk, N - 1);
        Error -> Error
    end.
