%%%----------------------------------------------------------------------
%%% File    : megaphone_reattach_tests.erl
%%% Purpose : A controller node that comes back and starts at once gets its listeners
%%%----------------------------------------------------------------------

%% @doc When the controller's node goes away, the Megaphone node closes its
%% listeners; the reactors let go of each listening socket a moment later.
%% A controller that reconnects and sends `start' again within that moment
%% (mod_megaphone does so at once after a nodedown) used to get
%% `{listen_failed, _, eaddrinuse}' and kept no listener until its next
%% retry. The fault run found it after a SIGSTOP of the node longer than
%% net_ticktime. To make the reactors late for sure, this test has many
%% clients with input waiting when the link drops: the node is SIGSTOPped,
%% the clients send, our side drops the link and starts connecting again,
%% and only then the node is SIGCONTed.
-module(megaphone_reattach_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOCALHOST, {127, 0, 0, 1}).
-define(CLIENTS, 300).
-define(ROUNDS, 3).
-define(WAIT, 10000).

reattach_test_() ->
    {timeout, 120,
     {"start right after the controller's node reconnects reopens the same listener",
      fun start_after_reconnect/0}}.

start_after_reconnect() ->
    Fixture = megaphone_test_node:start(),
    try
        megaphone_test_node:with_output(Fixture, fun() -> start_after_reconnect(Fixture) end)
    after
        megaphone_test_node:stop(Fixture)
    end.

start_after_reconnect(#{node := Node, os_pid := OsPid}) ->
    Opts = [{listen, [{tcp, ?LOCALHOST, megaphone_test_client:free_port()}]}],
    {ok, _} = megaphone:start(Node, Opts),
    [round_trip(Node, integer_to_list(OsPid), Opts) || _ <- lists:seq(1, ?ROUNDS)],
    %% The listener serves.
    [{listen, [{tcp, _, Port}]}] = Opts,
    {ok, C} = gen_tcp:connect(?LOCALHOST, Port, [binary], ?WAIT),
    receive {megaphone_connect, _, _, _, _, tcp} -> ok after ?WAIT -> erlang:error(no_connect) end,
    gen_tcp:close(C).

round_trip(Node, OsPid, Opts) ->
    [{listen, [{tcp, _, Port}]}] = Opts,
    Clients = [connect(Port) || _ <- lists:seq(1, ?CLIENTS)],
    Ids = [receive {megaphone_connect, _, Id, _, _, _} -> Id after ?WAIT -> erlang:error(no_connect) end
           || _ <- Clients],
    [ok = megaphone:get_data(Node, Id) || Id <- Ids],
    kill("-STOP", OsPid),
    try
        [ok = gen_tcp:send(C, <<"hello">>) || C <- Clients],
        true = erlang:disconnect_node(Node),
        Self = self(),
        %% Blocks in the distribution handshake until the node runs again.
        spawn_link(fun() -> Self ! {restarted, megaphone:start(Node, [{controller, Self} | Opts])} end),
        wait_connecting(Node)
    after
        kill("-CONT", OsPid)
    end,
    Result = receive {restarted, R} -> R after ?WAIT -> erlang:error(no_start_reply) end,
    ?assertMatch({ok, #{listeners := [{tcp, ?LOCALHOST, Port}]}}, Result),
    [gen_tcp:close(C) || C <- Clients],
    flush().

%% Until our side has begun connecting to the (stopped) node again.
wait_connecting(Node) ->
    case net_kernel:node_info(Node, state) of
        {ok, pending} -> ok;
        _ -> receive after 20 -> wait_connecting(Node) end
    end.

connect(Port) ->
    {ok, C} = gen_tcp:connect(?LOCALHOST, Port, [binary, {active, false}], ?WAIT),
    C.

kill(Signal, OsPid) ->
    "" = os:cmd("kill " ++ Signal ++ " " ++ OsPid),
    ok.

flush() ->
    receive
        _ -> flush()
    after 200 -> ok
    end.
