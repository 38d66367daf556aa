%%%----------------------------------------------------------------------
%%% File    : megaphone_dist_port_tests.erl
%%% Purpose : The distribution port listens on loopback unless told otherwise
%%%----------------------------------------------------------------------

%% @doc The distribution port is advertised by epmd, so anything that can
%% reach it can open a connection. It listens on loopback unless
%% `--dist-interface' says otherwise, as operators expect from Erlang's
%% inet_dist_use_interface.
-module(megaphone_dist_port_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOCALHOST, {127, 0, 0, 1}).
-define(WAIT, 5000).

%%====================================================================
%% Tests
%%====================================================================

interface_test_() ->
    [{"the distribution port listens on 127.0.0.1 by default",
      {timeout, 60, fun() -> with_node([], fun loopback_by_default/1) end}},
     {"--dist-interface 0.0.0.0 listens on every interface",
      {timeout, 60, fun() -> with_node(["--dist-interface", "0.0.0.0"], fun any_interface/1) end}}].

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
