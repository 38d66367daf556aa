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

wait_unregistered() ->
    case whereis(megaphone) of
        undefined -> ok;
        _ -> receive after 10 -> wait_unregistered() end
    end.
