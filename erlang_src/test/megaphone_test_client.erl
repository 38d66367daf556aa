%%%----------------------------------------------------------------------
%%% File    : megaphone_test_client.erl
%%% Purpose : What the EUnit suites do as a controller and as a client
%%%----------------------------------------------------------------------

%% @doc Helpers the EUnit suites share: start a node's plain listener with
%% the calling process as controller, connect `gen_tcp' clients to it and
%% learn their ConnIds, wait for the node's messages, read its stats and an
%% OS process's RSS, and poll for a condition with a deadline.
-module(megaphone_test_client).

-include_lib("eunit/include/eunit.hrl").

-export([start/2]).
-export([stats/1]).
-export([connect/1]).
-export([accept/1]).
-export([await_connect/1]).
-export([recv_data/1]).
-export([recv_closed/1]).
-export([read_until_closed/2]).
-export([rss_kb/1]).
-export([poll/2]).
-export([deadline/1]).
-export([remaining/1]).
-export([free_port/0]).

-define(LOCALHOST, {127, 0, 0, 1}).
-define(WAIT, 5000).

%% Opens one plain listener on a free loopback port, with `Opts'; the caller
%% is the controller. Returns the port.
-spec start(node(), megaphone:opts()) -> inet:port_number().
start(Node, Opts) ->
    {ok, #{listeners := [{tcp, _, Port}]}} =
        megaphone:start(Node, [{listen, [{tcp, ?LOCALHOST, 0}]} | Opts]),
    Port.

-spec stats(node()) -> megaphone:stats().
stats(Node) ->
    {ok, Stats} = megaphone:stats(Node),
    Stats.

-spec connect(inet:port_number()) -> {ok, gen_tcp:socket()} | {error, term()}.
connect(Port) ->
    gen_tcp:connect(?LOCALHOST, Port, [binary, {active, false}], ?WAIT).

%% A client and the ConnId its `megaphone_connect' named.
-spec accept(inet:port_number()) -> {gen_tcp:socket(), megaphone:conn_id()}.
accept(Port) ->
    {ok, Client} = connect(Port),
    {Client, await_connect(Client)}.

-spec await_connect(gen_tcp:socket()) -> megaphone:conn_id().
await_connect(Client) ->
    {ok, {_, ClientPort}} = inet:sockname(Client),
    receive
        {megaphone_connect, _, ConnId, {?LOCALHOST, ClientPort}, _, _} -> ConnId
    after ?WAIT ->
            erlang:error(no_megaphone_connect)
    end.

-spec recv_data(megaphone:conn_id()) -> {tcp, megaphone:conn_id(), binary()}.
recv_data(ConnId) ->
    receive {tcp, ConnId, _} = Msg -> Msg after ?WAIT -> erlang:error({no_data, ConnId}) end.

-spec recv_closed(megaphone:conn_id()) -> {tcp_closed, megaphone:conn_id()} |
                                          {tcp_error, megaphone:conn_id(), term()}.
recv_closed(ConnId) ->
    receive
        {tcp_closed, ConnId} = Msg -> Msg;
        {tcp_error, ConnId, _} = Msg -> Msg
    after ?WAIT -> erlang:error({not_closed, ConnId})
    end.

%% Everything the client reads until its socket ends (or the deadline), and
%% how it ended (`closed', `econnreset', `timeout').
-spec read_until_closed(gen_tcp:socket(), integer()) -> {binary(), term()}.
read_until_closed(Client, Deadline) ->
    read_until_closed(Client, Deadline, []).

read_until_closed(Client, Deadline, Acc) ->
    case gen_tcp:recv(Client, 0, remaining(Deadline)) of
        {ok, Data} -> read_until_closed(Client, Deadline, [Acc, Data]);
        {error, Reason} -> {iolist_to_binary(Acc), Reason}
    end.

%% VmRSS of an OS process, in KiB.
-spec rss_kb(integer()) -> non_neg_integer().
rss_kb(OsPid) ->
    {ok, Status} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/status"),
    {match, [Kb]} = re:run(Status, "VmRSS:\\s+(\\d+) kB", [{capture, all_but_first, binary}]),
    binary_to_integer(Kb).

%% Calls Fun every 20 ms until it returns something other than false, and
%% returns that; fails after Timeout ms.
-spec poll(fun(() -> term()), timeout()) -> term().
poll(Fun, Timeout) ->
    poll_until(Fun, deadline(Timeout)).

poll_until(Fun, Deadline) ->
    case Fun() of
        false ->
            case remaining(Deadline) of
                0 -> erlang:error({poll_timeout, Fun});
                _ -> receive after 20 -> ok end, poll_until(Fun, Deadline)
            end;
        Result ->
            Result
    end.

%% A loopback port that was free a moment ago (for a listener asked for by number).
-spec free_port() -> inet:port_number().
free_port() ->
    {ok, L} = gen_tcp:listen(0, [{ip, ?LOCALHOST}]),
    {ok, Port} = inet:port(L),
    ok = gen_tcp:close(L),
    Port.

-spec deadline(non_neg_integer()) -> integer().
deadline(Timeout) ->
    erlang:monotonic_time(millisecond) + Timeout.

-spec remaining(integer()) -> non_neg_integer().
remaining(Deadline) ->
    max(0, Deadline - erlang:monotonic_time(millisecond)).
