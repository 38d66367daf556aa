%%% The Erlang-native reference server for bench/megaphone_bench.erl.
%%%
%%% Loaded into a plain `erl' node (nothing else running) and driven by the
%%% bench node over rpc. It listens with gen_tcp (inet driver, passive mode)
%%% and holds every accepted socket, in one of two ways:
%%%   process - one process per accepted socket, blocked in gen_tcp:recv/2:
%%%             what a naive gen_tcp server does;
%%%   held    - the acceptor keeps the sockets in a list: no process per
%%%             socket, the cheapest a BEAM node can hold a socket.
-module(megaphone_bench_ref).

-export([listen/1, count/0, stop/0, memory/0]).

-define(KEY, {?MODULE, state}).

%% Starts a listener on 127.0.0.1 with an ephemeral port; returns {ok, Port}.
listen(Mode) when Mode =:= process; Mode =:= held ->
    stop(),
    Caller = self(),
    Counter = counters:new(1, [write_concurrency]),
    Pid = spawn(fun() -> init(Caller, Mode, Counter) end),
    receive
        {?MODULE, Pid, Reply} -> Reply
    after 5000 ->
        exit(Pid, kill),
        {error, timeout}
    end.

%% Sockets accepted and still open (for `held': accepted since listen/1).
count() ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> 0;
        {_Pid, Counter} -> counters:get(Counter, 1)
    end.

%% Closes the listener and every socket it accepted.
stop() ->
    megaphone_bench_lib:stop_owner(?KEY, 10000).

%% erlang:memory/0 plus the process and port counts.
memory() ->
    megaphone_bench_lib:node_memory().

%% --- internals ---

init(Caller, Mode, Counter) ->
    process_flag(trap_exit, true),
    Opts = [binary, {active, false}, {packet, raw}, {reuseaddr, true},
            {ip, {127, 0, 0, 1}}, {backlog, 4096}],
    case gen_tcp:listen(0, Opts) of
        {ok, L} ->
            {ok, Port} = inet:port(L),
            persistent_term:put(?KEY, {self(), Counter}),
            Self = self(),
            Acceptor = spawn_link(fun() -> accept_loop(Self, L, Mode, Counter) end),
            Caller ! {?MODULE, self(), {ok, Port}},
            owner_loop(L, Acceptor, []);
        {error, _} = Error ->
            Caller ! {?MODULE, self(), Error}
    end.

%% The owner holds the listener and, in `held' mode, the sockets.
owner_loop(L, Acceptor, Held) ->
    receive
        {held, S} ->
            owner_loop(L, Acceptor, [S | Held]);
        stop ->
            unlink(Acceptor),
            exit(Acceptor, kill),
            gen_tcp:close(L),
            [gen_tcp:close(S) || S <- Held],
            %% Handlers are linked to nobody: they end when their socket
            %% closes (the clients are closed before stop/0 is called).
            ok;
        {'EXIT', Acceptor, Reason} ->
            gen_tcp:close(L),
            [gen_tcp:close(S) || S <- Held],
            exit(Reason)
    end.

accept_loop(Owner, L, Mode, Counter) ->
    case gen_tcp:accept(L) of
        {ok, S} ->
            counters:add(Counter, 1, 1),
            case Mode of
                held ->
                    ok = gen_tcp:controlling_process(S, Owner),
                    Owner ! {held, S};
                process ->
                    Pid = spawn(fun() -> receive {go, Sock} -> handler(Sock, Counter) end end),
                    ok = gen_tcp:controlling_process(S, Pid),
                    Pid ! {go, S}
            end,
            accept_loop(Owner, L, Mode, Counter);
        {error, closed} ->
            ok;
        {error, Reason} ->
            exit({accept, Reason})
    end.

%% A naive handler: blocked in recv until the client sends or leaves.
handler(S, Counter) ->
    case gen_tcp:recv(S, 0) of
        {ok, _Data} ->
            handler(S, Counter);
        {error, _} ->
            counters:sub(Counter, 1, 1),
            gen_tcp:close(S)
    end.
