%%%----------------------------------------------------------------------
%%% File    : megaphone_socket_tests.erl
%%% Purpose : Unit tests of the socket module, with a stand-in node process
%%%----------------------------------------------------------------------

%% @doc megaphone_socket turns socket calls into Megaphone requests. Here the
%% "node" is this VM: a process registered as `megaphone' stands in for the
%% Swift node and reports what it receives.
-module(megaphone_socket_tests).

-include_lib("eunit/include/eunit.hrl").

-define(ID, 4097).

socket_test_() ->
    [{"get_owner is the caller (raw-bytes mode)", with_fake(fun owner/0)},
     {"send/2 is send_data", with_fake(fun send/0)},
     {"setopts active once is get_data from the caller", with_fake(fun setopts/0)},
     {"close/1 is close, and may be called twice", with_fake(fun close/0)},
     {"send_xml serialises", with_fake(fun send_xml/0)},
     {"get_transport is tcp or tls", fun transport/0},
     {"parsed: the node owns the stream", fun parsed_owner/0},
     {"parsed: setopts opens the window, handled elements give credit in batches",
      with_fake(fun parsed_credit/0)},
     {"parsed: reset_stream restarts the node's parser", with_fake(fun parsed_reset/0)},
     {"parsed: change_shaper paces the node's reads", with_fake(fun parsed_shaper/0)},
     {"raw: element_handled does nothing", with_fake(fun raw_element_handled/0)},
     {"an unconnected node fails the send, not the session", fun unconnected/0}].

%% Runs Test in the test process with a relay registered as `megaphone'
%% that forwards to it (EUnit runs setup in another process).
with_fake(Test) ->
    fun() ->
            Self = self(),
            Fake = spawn_link(fun() -> relay(Self) end),
            true = register(megaphone, Fake),
            try Test()
            after
                unlink(Fake),
                exit(Fake, kill),
                wait_unregistered()
            end
    end.

relay(Test) ->
    receive Msg -> Test ! {node_got, Msg}, relay(Test) end.

socket(Transport) ->
    {megaphone, node(), ?ID, Transport}.

got() ->
    receive {node_got, Msg} -> Msg after 1000 -> erlang:error(nothing_received) end.

owner() ->
    ?assertEqual(self(), megaphone_socket:get_owner(socket(tcp))).

send() ->
    ?assertEqual(ok, megaphone_socket:send(socket(tcp), [<<"<a/>">>, "b"])),
    ?assertEqual({send_data, ?ID, [<<"<a/>">>, "b"]}, got()).

setopts() ->
    ?assertEqual(ok, megaphone_socket:setopts(socket(tcp), [{active, once}])),
    Self = self(),
    ?assertEqual({get_data, Self, ?ID}, got()),
    %% Other options ask for nothing.
    ?assertEqual(ok, megaphone_socket:setopts(socket(tcp), [{active, false}])),
    receive {node_got, Unexpected} -> erlang:error({unexpected, Unexpected}) after 100 -> ok end.

close() ->
    ?assertEqual(ok, megaphone_socket:close(socket(tls))),
    ?assertEqual(ok, megaphone_socket:close(socket(tls))),
    ?assertEqual({close, ?ID}, got()),
    ?assertEqual({close, ?ID}, got()).

send_xml() ->
    ok = megaphone_socket:send_xml(socket(tcp), {xmlstreamraw, <<"raw">>}),
    ?assertEqual({send_data, ?ID, <<"raw">>}, got()),
    ok = megaphone_socket:send_xml(socket(tcp), {xmlstreamend, <<"stream:stream">>}),
    {send_data, ?ID, End} = got(),
    ?assertEqual(<<"</stream:stream>">>, iolist_to_binary(End)).

transport() ->
    ?assertEqual(tcp, megaphone_socket:get_transport(socket(tcp))),
    ?assertEqual(tls, megaphone_socket:get_transport(socket(tls))),
    ?assertEqual({error, enotconn}, megaphone_socket:peername(socket(tcp))),
    S = socket(tcp),
    ?assertEqual(S, megaphone_socket:reset_stream(S)).

unconnected() ->
    S = {megaphone, 'nowhere@nohost', ?ID, tcp},
    ?assertEqual({error, closed}, megaphone_socket:send(S, <<"x">>)),
    ?assertEqual({error, closed}, megaphone_socket:setopts(S, [{active, once}])),
    ?assertEqual(ok, megaphone_socket:close(S)).

parsed(Transport) ->
    {megaphone, node(), ?ID, Transport, node_pid()}.

node_pid() ->
    list_to_pid("<0.4242.0>").

parsed_owner() ->
    ?assertEqual(node_pid(), megaphone_socket:get_owner(parsed(tcp))),
    ?assertEqual(tls, megaphone_socket:get_transport(parsed(tls))).

%% xmpp_socket's #socket_state{} (p1_xmpp 1.6.1) around a socket term.
socket_state(Socket) ->
    {socket_state, megaphone_socket, Socket, infinity, undefined, none, none}.

parsed_credit() ->
    Self = self(),
    ok = megaphone_socket:setopts(parsed(tcp), [{active, once}]),
    ?assertEqual({get_data, Self, ?ID}, got()),
    State = socket_state(parsed(tcp)),
    Batch = megaphone_socket:window() div 2,
    [megaphone_socket:element_handled(State) || _ <- lists:seq(1, Batch - 1)],
    nothing_more(),
    megaphone_socket:element_handled(State),
    ?assertEqual({credit, ?ID, Batch}, got()),
    %% nothing left in the dictionary between batches
    ?assertEqual(undefined, get(megaphone_handled)),
    [megaphone_socket:element_handled(State) || _ <- lists:seq(1, Batch)],
    ?assertEqual({credit, ?ID, Batch}, got()).

parsed_reset() ->
    S = parsed(tcp),
    ?assertEqual(S, megaphone_socket:reset_stream(S)),
    ?assertEqual({reset_stream, ?ID}, got()).

parsed_shaper() ->
    ok = megaphone_socket:change_shaper(parsed(tcp), p1_shaper_state(3000, 20000)),
    ?assertEqual({shaper, ?ID, {3000, 20000}}, got()),
    ok = megaphone_socket:change_shaper(parsed(tcp), none),
    ?assertEqual({shaper, ?ID, none}, got()),
    %% raw mode: xmpp_socket shapes its own reads
    ok = megaphone_socket:change_shaper(socket(tcp), p1_shaper_state(3000, 20000)),
    nothing_more().

%% p1_shaper:new(Rate, Burst) of p1_utils 1.0.25 (not on this code path).
p1_shaper_state(Rate, Burst) ->
    {state, Rate, Burst, Burst, erlang:system_time(microsecond)}.

raw_element_handled() ->
    %% a raw session's socket, and any other socket module's: nothing
    [megaphone_socket:element_handled(socket_state(socket(tcp))) || _ <- lists:seq(1, 64)],
    [megaphone_socket:element_handled({socket_state, gen_tcp, port, infinity, undefined, none, none})
     || _ <- lists:seq(1, 64)],
    nothing_more(),
    ?assertEqual(undefined, get(megaphone_handled)).

nothing_more() ->
    receive {node_got, Unexpected} -> erlang:error({unexpected, Unexpected}) after 100 -> ok end.

wait_unregistered() ->
    case whereis(megaphone) of
        undefined -> ok;
        _ -> receive after 10 -> wait_unregistered() end
    end.
