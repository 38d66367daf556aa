%%% The Erlang-native TLS reference server for bench/megaphone_bench_tls.erl.
%%%
%%% Loaded into a plain `erl' node (nothing else running) and driven by the
%%% bench node over rpc. It listens with OTP's `ssl' (TLS 1.2 and 1.3, the
%%% same certificate and key as the Megaphone node, no session resumption, no
%%% session tickets) and runs a pool of acceptors: each takes a connection
%%% with ssl:transport_accept/1, starts a replacement acceptor and runs the
%%% handshake itself (the usual OTP pattern). After the handshake:
%%%   held      - the socket is handed to one holder process (controlling
%%%               process) and the handshake process ends: per connection
%%%               only what ssl itself needs (its connection and sender
%%%               processes) remains: the cheapest a BEAM node holds a TLS
%%%               socket;
%%%   handshake - the process closes the connection at once (the
%%%               handshake-rate test: the clients wait for that close).
%%% Counters: handshakes done, handshakes failed, connections held.
-module(megaphone_bench_tls_ref).

-export([listen/4]).
-export([counts/0]).
-export([stop/0]).
-export([memory/0]).

-define(KEY, {?MODULE, state}).
-define(ACCEPTORS, 32).

%% Starts a listener on 127.0.0.1 with an ephemeral port; returns {ok, Port}.
-spec listen(held | handshake, file:filename(), file:filename(), [atom()]) ->
          {ok, inet:port_number()} | {error, term()}.
listen(Mode, CertFile, KeyFile, Versions) when Mode =:= held; Mode =:= handshake ->
    stop(),
    {ok, _} = application:ensure_all_started(ssl),
    Caller = self(),
    %% 1: handshakes done, 2: handshakes failed, 3: connections open.
    Counter = counters:new(3, [write_concurrency]),
    Pid = spawn(fun() -> init(Caller, Mode, CertFile, KeyFile, Versions, Counter) end),
    receive
        {?MODULE, Pid, Reply} -> Reply
    after 10000 ->
        exit(Pid, kill),
        {error, timeout}
    end.

%% #{done, failed, open}.
-spec counts() -> map().
counts() ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> #{done => 0, failed => 0, open => 0};
        {_Pid, C} -> #{done => counters:get(C, 1), failed => counters:get(C, 2),
                       open => counters:get(C, 3)}
    end.

%% Closes the listener and every socket it holds.
-spec stop() -> ok.
stop() ->
    megaphone_bench_lib:stop_owner(?KEY, 30000).

%% erlang:memory/0 plus the process and port counts.
-spec memory() -> map().
memory() ->
    megaphone_bench_lib:node_memory().

%%====================================================================
%% Internals
%%====================================================================

init(Caller, Mode, CertFile, KeyFile, Versions, Counter) ->
    process_flag(trap_exit, true),
    Opts = [binary, {active, false}, {packet, raw}, {reuseaddr, true}, {ip, {127, 0, 0, 1}},
            {backlog, 4096}, {certfile, CertFile}, {keyfile, KeyFile}, {versions, Versions}]
        %% reuse_sessions exists for TLS 1.2 only; TLS 1.3 session tickets
        %% are off by default on an OTP server.
        ++ [{reuse_sessions, false} || lists:member('tlsv1.2', Versions)],
    case ssl:listen(0, Opts) of
        {ok, L} ->
            {ok, {_, Port}} = ssl:sockname(L),
            persistent_term:put(?KEY, {self(), Counter}),
            Self = self(),
            [spawn_acceptor(Self, L, Mode, Counter) || _ <- lists:seq(1, ?ACCEPTORS)],
            Caller ! {?MODULE, self(), {ok, Port}},
            owner_loop(L, []);
        {error, _} = Error ->
            Caller ! {?MODULE, self(), Error}
    end.

%% The owner holds the listener and, in `held' mode, the sockets.
owner_loop(L, Held) ->
    receive
        {held, S} ->
            owner_loop(L, [S | Held]);
        stop ->
            ssl:close(L),
            [ssl:close(S) || S <- Held],
            ok;
        {'EXIT', _, _} ->
            owner_loop(L, Held)
    end.

spawn_acceptor(Owner, L, Mode, Counter) ->
    spawn(fun() -> acceptor(Owner, L, Mode, Counter) end).

acceptor(Owner, L, Mode, Counter) ->
    case ssl:transport_accept(L) of
        {ok, T} ->
            spawn_acceptor(Owner, L, Mode, Counter),
            case ssl:handshake(T, 10000) of
                {ok, S} ->
                    counters:add(Counter, 1, 1),
                    after_handshake(Owner, S, Mode, Counter);
                {error, _} ->
                    counters:add(Counter, 2, 1),
                    catch ssl:close(T)
            end;
        {error, closed} ->
            ok;
        {error, _} ->
            %% e.g. emfile: keep the pool's size, after a pause.
            timer:sleep(100),
            acceptor(Owner, L, Mode, Counter)
    end.

after_handshake(Owner, S, held, Counter) ->
    counters:add(Counter, 3, 1),
    ok = ssl:controlling_process(S, Owner),
    Owner ! {held, S};
after_handshake(_Owner, S, handshake, _Counter) ->
    ssl:close(S).
