%%% Megaphone TLS benchmark: memory per idle TLS connection, full handshakes
%%% per second, and XMPP message throughput over TLS against ejabberd's own
%%% TLS listener; each Megaphone number beside an Erlang-native reference
%%% measured in the same run. Started by bench/run-tls (twice: once for the
%%% memory and handshake sections, once, with ejabberd up, for the XMPP
%%% section), which also starts and stops every other process. See
%%% bench/README.md, section "TLS".
%%%
%%%   erl -sname B -setcookie C -noshell -pa DIR -run megaphone_bench_tls main \
%%%       sections=mem,hs | sections=xmpp   and key=value options (parse_arg/2)
%%%
%%% The markdown report goes to stdout, progress to stderr. Exit status 0 on
%%% success, 1 on any failure (with the reason on stderr).
-module(megaphone_bench_tls).

-export([main/1]).

-import(megaphone_bench_lib, [report_and_halt/1, fail/2, progress/2, connect_node/2, rpc/4, stop_node/1,
                              ej_started/1, mp_call/4, mp_stats/1, mp_connections/1, mp_shutdown/1,
                              receive_connects/3, reactors/1, reactor_spread/2, wait_until/3,
                              flush_mailbox/0, deadline/1, remaining/1, interleave/2, timed/1,
                              delta/2, sum_counters/2, per/2, proc_status/1, rss/1, cpu_ticks/1,
                              thread_ticks/1, other_cpu/5, slab_kb/0, others/1, thread_label/1,
                              range/2, int/1, f0/1, f1/1, f2/1]).
%% The XMPP client functions (login, stream I/O) are shared with bench/xmpp.
-import(megaphone_bench_load, [login/4, check/2, setopts/3]).

-define(LOCALHOST, {127, 0, 0, 1}).
-define(BIG, 1000000).

%%====================================================================
%% Entry point
%%====================================================================

main(Args) ->
    report_and_halt(
      fun() ->
              O = parse_args(Args),
              {ok, _} = application:ensure_all_started(ssl),
              %% The measuring process must get the CPU on time even when the
              %% machine is saturated by the measured traffic.
              process_flag(priority, high),
              run(O)
      end).

parse_args(Args) ->
    Defaults = #{sections => [mem, hs], idle => 10000, reps => 2, warmup => 2,
                 mem_version => 'tlsv1.3', openers => 16,
                 hs_conc => 16, hs_secs => 10, versions => ['tlsv1.3', 'tlsv1.2'],
                 pairs => 50, inflight => 10, xmpp_secs => 10, body => 100,
                 clk_tck => 100, cert => "?"},
    lists:foldl(fun parse_arg/2, Defaults, Args).

parse_arg(Arg, O) ->
    case string:split(Arg, "=") of
        ["sections", V] -> O#{sections => atoms(V)};
        ["versions", V] -> O#{versions => atoms(V)};
        ["mem_version", V] -> O#{mem_version => list_to_atom(V)};
        %% Node@Host:OsPid,... (one Swift node per memory rep)
        [K, V] when K =:= "mem_mp"; K =:= "hs_mp"; K =:= "ej_mp" ->
            O#{list_to_atom(K) => [node_pid(NP) || NP <- string:lexemes(V, ",")]};
        [K, V] when K =:= "mem_ref"; K =:= "hs_ref" -> O#{list_to_atom(K) => atoms(V)};
        ["ej", V] -> O#{ej => list_to_atom(V)};
        [K, V] when K =:= "certfile"; K =:= "keyfile"; K =:= "bundle"; K =:= "ej_pid";
                    K =:= "cert" ->
            O#{list_to_atom(K) => V};
        [K, V] when K =:= "idle"; K =:= "reps"; K =:= "warmup"; K =:= "openers";
                    K =:= "hs_conc"; K =:= "hs_secs"; K =:= "pairs"; K =:= "inflight";
                    K =:= "xmpp_secs"; K =:= "body"; K =:= "clk_tck"; K =:= "ej_native_port";
                    K =:= "ej_mp_port"; K =:= "ej_native_tcp_port"; K =:= "ej_mp_tcp_port" ->
            O#{list_to_atom(K) => list_to_integer(V)};
        _ -> fail("bad argument ~s", [Arg])
    end.

atoms(V) -> [list_to_atom(A) || A <- string:lexemes(V, ","), A =/= ""].

node_pid(S) ->
    [N, P] = string:split(S, ":", trailing),
    {list_to_atom(N), P}.

run(O = #{sections := Sections}) ->
    [case lists:member(S, Sections) of
         true -> section(S, O);
         false -> ""
     end || S <- [mem, hs, xmpp]].

section(mem, O) -> mem_report(O, mem_section(O));
section(hs, O) -> hs_report(O, hs_section(O));
section(xmpp, O) -> xmpp_report(O, xmpp_section(O)).

%%====================================================================
%% Talking to a Swift node
%%====================================================================

mp_start_tls(MP, Controller, #{bundle := Bundle}) ->
    Opts = [{listen, [{tls, ?LOCALHOST, 0}]}, {certfile, Bundle},
            %% All clients come from 127.0.0.1.
            {max_handshakes_per_ip, ?BIG}, {controller, Controller}],
    Info = mp_call(MP, fun(Ref) -> {start, self(), Ref, Opts} end, megaphone_started, 10000),
    case Info of
        #{listeners := [{tls, _, Port}]} -> Port;
        _ -> fail("unexpected start reply ~p", [Info])
    end.

%% The TLS counters of a stats map that are not zero.
tls_closed(#{closed := Closed}) ->
    maps:filter(fun(_, V) -> V > 0 end, Closed);
tls_closed(_) ->
    #{}.

%%====================================================================
%% TLS clients
%%====================================================================

%% The key exchange is pinned so that both servers do the same work: X25519
%% in TLS 1.3; P-256 ECDHE in TLS 1.2 (OTP's ssl has no X25519 for TLS 1.2,
%% and an OTP client left alone offers secp521r1 first, which an OTP server
%% takes and OpenSSL with server preference does not).
client_opts('tlsv1.3') ->
    [binary, {active, false}, {nodelay, true}, {verify, verify_none}, {versions, ['tlsv1.3']},
     %% TLS 1.3 session tickets are off by default in an OTP client: no resumption.
     {supported_groups, [x25519]}];
client_opts('tlsv1.2') ->
    [binary, {active, false}, {nodelay, true}, {verify, verify_none}, {versions, ['tlsv1.2']},
     %% No resumption: an OTP client would otherwise reuse session ids.
     {reuse_sessions, false}, {eccs, [secp256r1]}].

key_exchange('tlsv1.3') -> "X25519";
key_exchange('tlsv1.2') -> "P-256".

%% The negotiated protocol and cipher of one connection to Port.
probe(Port, Version) ->
    case ssl:connect(?LOCALHOST, Port, client_opts(Version), 10000) of
        {ok, S} ->
            {ok, Info} = ssl:connection_information(S, [protocol, selected_cipher_suite]),
            ssl:close(S),
            #{cipher := C, key_exchange := KX} = proplists:get_value(selected_cipher_suite, Info),
            io_lib:format("~s ~s ~s/~s", [proplists:get_value(protocol, Info), key_exchange(Version),
                                          KX, C]);
        {error, Reason} ->
            fail("TLS probe to port ~b failed: ~p", [Port, Reason])
    end.

%% W processes open N TLS connections (handshake done) to 127.0.0.1:Port
%% between them and hold them until close_clients/1. linger 0: closing
%% sends RST, so no TIME_WAIT piles up.
open_clients(Port, N, Version, W0) ->
    W = max(1, min(W0, N)),
    Parent = self(),
    Opts = [{linger, {true, 0}} | client_opts(Version)],
    Shares = [N div W + case I =< N rem W of true -> 1; false -> 0 end || I <- lists:seq(1, W)],
    Pids = [spawn(fun() -> opener(Parent, Port, Share, Opts) end) || Share <- Shares],
    Refs = [erlang:monitor(process, P) || P <- Pids],
    await_openers(Pids, Refs, deadline(600000)),
    Pids.

opener(Parent, Port, Share, Opts) ->
    Socks = open_n(Port, Share, Opts, []),
    Parent ! {opened, self()},
    receive close -> [ssl:close(S) || S <- Socks] end.

open_n(_Port, 0, _Opts, Acc) ->
    Acc;
open_n(Port, N, Opts, Acc) ->
    case ssl:connect(?LOCALHOST, Port, Opts, 30000) of
        {ok, S} -> open_n(Port, N - 1, Opts, [S | Acc]);
        {error, Reason} -> exit({ssl_connect, length(Acc), Reason})
    end.

await_openers([], _Refs, _Deadline) ->
    ok;
await_openers(Pids, Refs, Deadline) ->
    receive
        {opened, P} ->
            await_openers(lists:delete(P, Pids), Refs, Deadline);
        {'DOWN', _, process, P, Reason} ->
            case lists:member(P, Pids) of
                true -> fail("a TLS client opener failed: ~p", [Reason]);
                false -> await_openers(Pids, Refs, Deadline)
            end
    after remaining(Deadline) ->
        fail("opening TLS clients timed out", [])
    end.

close_clients(Pids) ->
    Refs = [erlang:monitor(process, P) || P <- Pids],
    [P ! close || P <- Pids],
    [receive {'DOWN', R, _, _, _} -> ok end || R <- Refs],
    ok.

%%====================================================================
%% a) RSS per idle TLS connection
%%====================================================================

mem_section(O = #{reps := Reps, mem_mp := MPs, mem_ref := Refs}) ->
    (length(MPs) >= Reps andalso length(Refs) >= Reps)
        orelse fail("need ~b Swift nodes and ~b reference nodes for the memory reps", [Reps, Reps]),
    lists:append(
      [begin
           [(mem_run(O, Kind, Rep))#{kind => Kind, rep => Rep} || Kind <- interleave(Rep, [megaphone, ref])]
       end || Rep <- lists:seq(1, Reps)]).

%% A fresh Swift node per rep: RSS never shrinks after a peak.
mem_run(O = #{idle := N, mem_mp := MPs, mem_version := V, openers := W}, megaphone, Rep) ->
    {MP, OsPid} = lists:nth(Rep, MPs),
    progress("memory rep ~b: Megaphone ~s, ~b idle TLS connections (~s)", [Rep, MP, N, V]),
    connect_node(MP, 20000),
    Port = mp_start_tls(MP, self(), O),
    Reactors = reactors(OsPid),
    flush_mailbox(),
    garbage_collect(),
    Before = proc_status(OsPid),
    Slab0 = slab_kb(),
    T0 = erlang:monotonic_time(millisecond),
    Clients = open_clients(Port, N, V, W),
    ConnIds = receive_connects(N, 120000, tls),
    length(ConnIds) =:= N orelse fail("got ~b megaphone_connect (tls) messages, expected ~b",
                                      [length(ConnIds), N]),
    wait_until(fun() -> mp_connections(MP) >= N end, 60000,
               io_lib:format("megaphone connections = ~b", [N])),
    T1 = erlang:monotonic_time(millisecond),
    %% Idle for a moment: every handshake is done, nothing is in flight.
    timer:sleep(1000),
    After = proc_status(OsPid),
    Slab1 = slab_kb(),
    Stats = mp_stats(MP),
    progress("  Megaphone RSS ~b -> ~b KiB (~.1f B/conn)",
             [rss(Before), rss(After), (rss(After) - rss(Before)) * 1024 / N]),
    Probe = probe(Port, V),
    close_clients(Clients),
    wait_until(fun() -> mp_connections(MP) =:= 0 end, 60000, "megaphone connections = 0 after close"),
    Closed = proc_status(OsPid),
    Final = mp_shutdown(MP),
    flush_mailbox(),
    #{before => Before, 'after' => After, closed => Closed, secs => (T1 - T0) / 1000,
      slab => Slab1 - Slab0, stats => Stats, final => Final, spread => reactor_spread(ConnIds, Reactors),
      probe => Probe};
mem_run(#{idle := N, mem_ref := Refs, mem_version := V, openers := W,
          certfile := Cert, keyfile := Key}, ref, Rep) ->
    RefNode = lists:nth(Rep, Refs),
    progress("memory rep ~b: Erlang ssl on ~s, ~b idle TLS connections (~s)", [Rep, RefNode, N, V]),
    connect_node(RefNode, 20000),
    {module, _} = rpc(RefNode, code, ensure_loaded, [megaphone_bench_tls_ref]),
    {ok, Port} = rpc(RefNode, megaphone_bench_tls_ref, listen,
                     [held, Cert, Key, ['tlsv1.3', 'tlsv1.2']]),
    OsPid = rpc(RefNode, os, getpid, []),
    rpc(RefNode, erlang, garbage_collect, []),
    Mem0 = rpc(RefNode, megaphone_bench_tls_ref, memory, []),
    Before = proc_status(OsPid),
    Slab0 = slab_kb(),
    T0 = erlang:monotonic_time(millisecond),
    Clients = open_clients(Port, N, V, W),
    wait_until(fun() -> maps:get(done, ref_counts(RefNode)) >= N end, 120000,
               io_lib:format("reference handshakes = ~b", [N])),
    T1 = erlang:monotonic_time(millisecond),
    timer:sleep(1000),
    After = proc_status(OsPid),
    Slab1 = slab_kb(),
    Mem1 = rpc(RefNode, megaphone_bench_tls_ref, memory, []),
    Counts = ref_counts(RefNode),
    progress("  Erlang ssl RSS ~b -> ~b KiB (~.1f B/conn)",
             [rss(Before), rss(After), (rss(After) - rss(Before)) * 1024 / N]),
    Probe = probe(Port, V),
    close_clients(Clients),
    ok = rpc(RefNode, megaphone_bench_tls_ref, stop, []),
    Closed = proc_status(OsPid),
    stop_node(RefNode),
    #{before => Before, 'after' => After, closed => Closed, secs => (T1 - T0) / 1000,
      slab => Slab1 - Slab0, mem0 => Mem0, mem1 => Mem1, counts => Counts, probe => Probe}.

ref_counts(RefNode) ->
    rpc(RefNode, megaphone_bench_tls_ref, counts, []).

%%====================================================================
%% b) Full handshakes per second
%%====================================================================

hs_section(O = #{reps := Reps, versions := Versions, hs_mp := [{MP, MpPid}], hs_ref := [RefNode],
                 certfile := Cert, keyfile := Key}) ->
    connect_node(MP, 20000),
    %% The controller counts each handshake (a megaphone_connect) and closes
    %% the connection at once: the server closes first, as the Erlang
    %% reference does right after ssl:handshake/2.
    Ctr = counters:new(2, [write_concurrency]),
    Ctl = spawn_link(fun() -> counting_controller({megaphone, MP}, Ctr) end),
    MpPort = mp_start_tls(MP, Ctl, O),
    connect_node(RefNode, 20000),
    {module, _} = rpc(RefNode, code, ensure_loaded, [megaphone_bench_tls_ref]),
    {ok, RefPort} = rpc(RefNode, megaphone_bench_tls_ref, listen,
                        [handshake, Cert, Key, ['tlsv1.3', 'tlsv1.2']]),
    RefPid = rpc(RefNode, os, getpid, []),
    Servers = #{megaphone => #{port => MpPort, os_pid => MpPid, node => MP,
                               done => fun() -> counters:get(Ctr, 1) end,
                               open => fun() -> mp_connections(MP) end,
                               stats => fun() -> mp_stats(MP) end},
                ref => #{port => RefPort, os_pid => RefPid, node => RefNode,
                         done => fun() -> maps:get(done, ref_counts(RefNode)) end,
                         open => fun() -> maps:get(open, ref_counts(RefNode)) end,
                         stats => fun() -> ref_counts(RefNode) end}},
    Runs = lists:append(
             [begin
                  [(hs_run(O, maps:get(Kind, Servers), V))#{kind => Kind, rep => Rep, version => V}
                   || Kind <- interleave(Rep, [megaphone, ref])]
              end || V <- Versions, Rep <- lists:seq(1, Reps)]),
    ok = rpc(RefNode, megaphone_bench_tls_ref, stop, []),
    stop_node(RefNode),
    Final = mp_shutdown(MP),
    unlink(Ctl),
    exit(Ctl, kill),
    #{runs => Runs, final => Final}.

counting_controller(Dest, Ctr) ->
    receive
        {megaphone_connect, _, ConnId, _, _, _} ->
            Dest ! {close, ConnId},
            counters:add(Ctr, 1, 1);
        {tcp_closed, _} -> counters:add(Ctr, 2, 1);
        {tcp_error, _, _} -> counters:add(Ctr, 2, 1);
        _ -> ok
    end,
    counting_controller(Dest, Ctr).

hs_run(#{hs_conc := C, hs_secs := Secs, warmup := Warmup, clk_tck := Hz},
       #{port := Port, os_pid := SrvPid, done := Done, open := Open, stats := StatsF}, V) ->
    wait_until(fun() -> Open() =:= 0 end, 60000, "server connections = 0 before a handshake run"),
    Probe = probe(Port, V),
    Stop = atomics:new(1, []),
    %% 1: handshakes done, 2: failed; the first failure reasons go to the parent.
    Ctr = counters:new(2, [write_concurrency]),
    Parent = self(),
    Clients = [spawn(fun() -> hs_client(Parent, Port, client_opts(V), Stop, Ctr) end)
               || _ <- lists:seq(1, C)],
    timer:sleep(Warmup * 1000),
    BenchPid = os:getpid(),
    Read = fun() ->
                   {timed(fun() -> {counters:get(Ctr, 1), counters:get(Ctr, 2), Done()} end),
                    timed(fun() -> cpu_ticks(SrvPid) end),
                    timed(fun() -> cpu_ticks(BenchPid) end),
                    timed(fun() -> thread_ticks(SrvPid) end),
                    timed(fun megaphone_bench_lib:all_proc_ticks/0),
                    timed(fun megaphone_bench_lib:system_cpu/0)}
           end,
    S0 = StatsF(),
    R0 = Read(),
    timer:sleep(Secs * 1000),
    R1 = Read(),
    atomics:put(Stop, 1, 1),
    Refs = [erlang:monitor(process, P) || P <- Clients],
    [receive {'DOWN', R, _, _, _} -> ok after 30000 -> ok end || R <- Refs],
    [exit(P, kill) || P <- Clients],
    wait_until(fun() -> Open() =:= 0 end, 60000, "server connections = 0 after a handshake run"),
    S1 = StatsF(),
    Errors = collect_errors([]),
    {Cnt0, Srv0, Be0, Th0, All0, Sys0} = R0,
    {Cnt1, Srv1, Be1, Th1, All1, Sys1} = R1,
    {{Ok, Failed, SrvDone}, Dt} = delta(Cnt0, Cnt1),
    Sec = fun(A, B) -> {Ticks, _} = delta(A, B), Ticks / Hz end,
    SrvCpu = Sec(Srv0, Srv1),
    BenchCpu = Sec(Be0, Be1),
    {{Busy, Total}, _} = delta(Sys0, Sys1),
    {_, DtAll} = delta(setelement(1, All0, 0), setelement(1, All1, 0)),
    R = #{secs => Dt, ok => Ok, failed => Failed, srv_done => SrvDone, hs_s => Ok / Dt,
          srv_hs_s => SrvDone / Dt,
          srv_cpu => 100 * SrvCpu / Dt, bench_cpu => 100 * BenchCpu / Dt,
          srv_us => per(SrvCpu * 1.0e6, SrvDone), bench_us => per(BenchCpu * 1.0e6, Ok),
          threads => thread_pct(Th0, Th1, Hz),
          machine_busy => case Total of 0 -> 0.0; _ -> 100 * Busy / Total end,
          others => other_cpu(element(1, All0), element(1, All1), [SrvPid, BenchPid], Hz, DtAll),
          stats => {S0, S1}, errors => Errors, probe => Probe},
    progress("handshakes ~s port ~b: ~s/s (server saw ~s/s), server CPU ~s% = ~s us/handshake, "
             "clients ~s% = ~s us/handshake, failed ~b ~0p",
             [V, Port, int(maps:get(hs_s, R)), int(maps:get(srv_hs_s, R)), f0(maps:get(srv_cpu, R)),
              f0(maps:get(srv_us, R)), f0(maps:get(bench_cpu, R)), f0(maps:get(bench_us, R)),
              Failed, Errors]),
    R.

%% Full handshakes back to back until told to stop. After each, the client
%% waits for the server to close (it does so once its side of the handshake
%% is done), then closes too. A client closing first would race the server:
%% in TLS 1.3 the client is done before the server has read its Finished,
%% and OpenSSL then writes its session tickets to a closed peer and fails
%% the handshake.
hs_client(Parent, Port, Opts, Stop, Ctr) ->
    case atomics:get(Stop, 1) of
        1 ->
            ok;
        0 ->
            case ssl:connect(?LOCALHOST, Port, Opts, 10000) of
                {ok, S} ->
                    case await_close(S) of
                        ok ->
                            counters:add(Ctr, 1, 1);
                        {error, Reason} ->
                            counters:add(Ctr, 2, 1),
                            Parent ! {hs_error, {after_handshake, Reason}}
                    end,
                    ssl:close(S);
                {error, Reason} ->
                    counters:add(Ctr, 2, 1),
                    Parent ! {hs_error, Reason}
            end,
            hs_client(Parent, Port, Opts, Stop, Ctr)
    end.

await_close(S) ->
    case ssl:recv(S, 0, 10000) of
        {ok, _} -> await_close(S);
        {error, closed} -> ok;
        {error, Reason} -> {error, Reason}
    end.

collect_errors(Acc) ->
    receive
        {hs_error, Reason} -> collect_errors([Reason | Acc])
    after 0 ->
        lists:sublist(lists:usort(Acc), 3)
    end.

%% [{ThreadLabel, Percent}] over a window from two timed thread_ticks/1 readings.
thread_pct({T0, TS0}, {T1, TS1}, Hz) ->
    Dt = (TS1 - TS0) / 1.0e6,
    [{thread_label(Name), 100 * (Ticks - proplists:get_value(Name, T0, 0)) / Hz / Dt}
     || {Name, Ticks} <- T1].

%%====================================================================
%% c) XMPP messages over TLS: Megaphone's listener vs ejabberd's own
%%====================================================================

xmpp_section(O = #{ej := Ej, ej_mp := [{MP, _}], pairs := P, reps := Reps}) ->
    connect_node(Ej, 30000),
    wait_until(fun() -> ej_started(Ej) end, 60000, "ejabberd to be started"),
    connect_node(MP, 30000),
    %% mod_megaphone sends `start' once it has reached the node.
    wait_until(fun() -> maps:get(listeners, mp_stats(MP), []) =/= [] end, 60000,
               "mod_megaphone to start the Megaphone node's listener"),
    progress("xmpp: registering ~b users", [2 * P]),
    T0 = erlang:monotonic_time(millisecond),
    [register_user(Ej, U) || U <- lists:seq(1, 2 * P)],
    progress("xmpp: registered in ~b ms", [erlang:monotonic_time(millisecond) - T0]),
    %% Warm-up, not reported: every user logs in once on each path (first
    %% logins load code and fill caches on both sides).
    %% With the plain-TCP listeners (bench/run-tls --xmpp-plain), the same
    %% runs without TLS follow each TLS pair, for context.
    Pairs = [[native, megaphone] |
             [[native_tcp, megaphone_tcp] || maps:is_key(ej_native_tcp_port, O)]],
    [xmpp_run(O#{xmpp_secs => 1, warmup => 0}, Kind, 0) || Kind <- lists:append(Pairs)],
    Runs = lists:append(
             [begin
                  [(xmpp_run(O, Kind, Rep))#{kind => Kind, rep => Rep} || Kind <- interleave(Rep, Pair)]
              end || Rep <- lists:seq(1, Reps), Pair <- Pairs]),
    #{runs => Runs, mp_stats => mp_stats(MP),
      ej_info => rpc(Ej, ejabberd_config, get_version, [])}.

user(I) -> <<"tlsbench", (integer_to_binary(I))/binary>>.
password(I) -> <<"pw", (integer_to_binary(I))/binary>>.

register_user(Ej, I) ->
    case rpc(Ej, ejabberd_auth, try_register, [user(I), <<"localhost">>, password(I)]) of
        ok -> ok;
        {error, exists} -> ok;
        Other -> fail("registering ~s: ~p", [user(I), Other])
    end.

%% Chunks delivered to ejabberd, client bytes in (after TLS), bytes out.
chunk_counts(Stats) ->
    {maps:get(chunks_delivered, Stats, 0), maps:get(bytes_in, Stats, 0), maps:get(bytes_out, Stats, 0)}.

ej_sessions(Ej) ->
    rpc(Ej, ejabberd_sm, connected_users_number, []).

xmpp_run(O = #{ej := Ej, ej_pid := EjPid, ej_mp := [{MP, MpPid}], pairs := P, inflight := K,
               xmpp_secs := Secs, warmup := Warmup, clk_tck := Hz, body := BodySize}, Kind, Rep) ->
    Port = case Kind of
               native -> maps:get(ej_native_port, O);
               megaphone -> maps:get(ej_mp_port, O);
               native_tcp -> maps:get(ej_native_tcp_port, O);
               megaphone_tcp -> maps:get(ej_mp_tcp_port, O)
           end,
    Transport = case Kind of
                    native -> ssl;
                    megaphone -> ssl;
                    _ -> gen_tcp
                end,
    progress("xmpp rep ~b: ~p (port ~b), ~b pairs, ~b in flight each way, ~b s",
             [Rep, Kind, Port, P, K, Secs]),
    wait_until(fun() -> ej_sessions(Ej) =:= 0 end, 60000, "ejabberd sessions = 0 before a run"),
    MpStats0 = mp_stats(MP),
    Resource = iolist_to_binary(io_lib:format("r~b~s", [Rep, Kind])),
    Body = binary:copy(<<"x">>, BodySize),
    Stop = atomics:new(1, []),
    %% Per user: 1 messages received, 2 error stanzas received.
    Ctr = counters:new(2 * 2 * P, [write_concurrency]),
    Parent = self(),
    TL0 = erlang:monotonic_time(microsecond),
    UserMons = [spawn_monitor(fun() ->
                                      xmpp_user(Parent, Transport, Port, I, partner(I), Resource, Body, K,
                                                Stop, Ctr)
                              end) || I <- lists:seq(1, 2 * P)],
    Users = [U || {U, _} <- UserMons],
    Infos = [receive
                 {logged_in, U, Info} -> Info;
                 {login_failed, U, Why} -> fail("user ~b: login over ~p failed: ~p", [I, Kind, Why]);
                 {'DOWN', M, process, U, Why} -> fail("user ~b: died during login over ~p: ~p", [I, Kind, Why])
             after 60000 ->
                 fail("user ~b: no login over ~p within 60 s", [I, Kind])
             end || {I, {U, M}} <- lists:zip(lists:seq(1, 2 * P), UserMons)],
    LoginSecs = (erlang:monotonic_time(microsecond) - TL0) / 1.0e6,
    Sessions = ej_sessions(Ej),
    Sessions =:= 2 * P orelse fail("ejabberd counts ~b sessions, expected ~b", [Sessions, 2 * P]),
    [U ! go || U <- Users],
    timer:sleep(Warmup * 1000),
    BenchPid = os:getpid(),
    Read = fun() ->
                   {timed(fun() -> sum_counters(Ctr, 2 * P) end),
                    timed(fun() -> cpu_ticks(EjPid) end),
                    timed(fun() -> cpu_ticks(MpPid) end),
                    timed(fun() -> cpu_ticks(BenchPid) end),
                    timed(fun megaphone_bench_lib:all_proc_ticks/0),
                    timed(fun megaphone_bench_lib:system_cpu/0),
                    timed(fun() -> thread_ticks(MpPid) end),
                    timed(fun() -> chunk_counts(mp_stats(MP)) end)}
           end,
    R0 = Read(),
    timer:sleep(Secs * 1000),
    R1 = Read(),
    atomics:put(Stop, 1, 1),
    %% A user that died before the end shows as a 'DOWN' with a reason other than normal.
    Died = [Why || {_, M} <- UserMons,
                   Why <- [receive {'DOWN', M, _, _, W} -> W after 30000 -> timeout end],
                   Why =/= normal],
    Died =:= [] orelse progress("  WARNING: ~b clients did not end normally: ~0p",
                                [length(Died), lists:sublist(Died, 3)]),
    [exit(U, kill) || U <- Users],
    wait_until(fun() -> ej_sessions(Ej) =:= 0 end, 60000, "ejabberd sessions = 0 after a run"),
    MpStats1 = mp_stats(MP),
    {Msg0, Ej0, Mp0, Be0, All0, Sys0, Th0, Ch0} = R0,
    {Msg1, Ej1, Mp1, Be1, All1, Sys1, Th1, Ch1} = R1,
    {{Chunks, BytesIn, BytesOut}, _} = delta(Ch0, Ch1),
    {{Msgs, Errs}, Dt} = delta(Msg0, Msg1),
    Sec = fun(A, B) -> {Ticks, _} = delta(A, B), Ticks / Hz end,
    EjCpu = Sec(Ej0, Ej1),
    MpCpu = Sec(Mp0, Mp1),
    BeCpu = Sec(Be0, Be1),
    {{Busy, Total}, _} = delta(Sys0, Sys1),
    {_, DtAll} = delta(setelement(1, All0, 0), setelement(1, All1, 0)),
    R = #{secs => Dt, msgs => Msgs, error_stanzas => Errs, msgs_s => Msgs / Dt,
          login_secs => LoginSecs, logins_s => 2 * P / LoginSecs,
          ej_cpu => 100 * EjCpu / Dt, mp_cpu => 100 * MpCpu / Dt, bench_cpu => 100 * BeCpu / Dt,
          ej_us => per(EjCpu * 1.0e6, Msgs), mp_us => per(MpCpu * 1.0e6, Msgs),
          bench_us => per(BeCpu * 1.0e6, Msgs),
          machine_busy => case Total of 0 -> 0.0; _ -> 100 * Busy / Total end,
          others => other_cpu(element(1, All0), element(1, All1), [EjPid, MpPid, BenchPid], Hz, DtAll),
          probe => hd(Infos), died => length(Died), threads => thread_pct(Th0, Th1, Hz),
          chunks_per_msg => per(Chunks, Msgs), in_per_chunk => per(BytesIn, Chunks),
          out_per_msg => per(BytesOut, Msgs), mp_closed => {tls_closed(MpStats0), tls_closed(MpStats1)}},
    progress("  -> ~s msgs/s (errors ~b), logins ~s/s; CPU: ejabberd ~s% (~s us/msg), swift ~s% "
             "(~s us/msg), clients ~s%, others ~s",
             [int(Msgs / Dt), Errs, int(2 * P / LoginSecs), f0(maps:get(ej_cpu, R)),
              f1(maps:get(ej_us, R)), f0(maps:get(mp_cpu, R)), f1(maps:get(mp_us, R)),
              f0(maps:get(bench_cpu, R)), others(maps:get(others, R))]),
    R.

%% Users 2i-1 and 2i are a pair.
partner(I) when I rem 2 =:= 1 -> I + 1;
partner(I) -> I - 1.

%% One XMPP client over direct TLS (XEP-0368), or plain TCP (Transport
%% gen_tcp; ssl and gen_tcp share the calls used here): stream header, SASL
%% PLAIN, stream restart, resource binding, initial presence; then, after
%% `go', K chat messages to the partner's full JID, and one more for every
%% message received from it (so each direction keeps K in flight).
xmpp_user(Parent, T, Port, I, Partner, Resource, Body, K, Stop, Ctr) ->
    Opts = [binary, {active, false}, {nodelay, true}] ++
        case T of
            ssl -> [{verify, verify_none}, {server_name_indication, "localhost"},
                    {alpn_advertised_protocols, [<<"xmpp-client">>]}];
            gen_tcp -> []
        end,
    try
        {ok, S} = check(T:connect(?LOCALHOST, Port, Opts, 30000), connect),
        ok = login({T, S}, user(I), password(I), Resource),
        Info = tls_info({T, S}),
        Parent ! {logged_in, self(), Info},
        Msg = iolist_to_binary(["<message to='", user(Partner), "@localhost/", Resource,
                                "' type='chat'><body>", Body, "</body></message>"]),
        receive go -> ok end,
        ok = setopts(T, S, [{active, true}]),
        ok = T:send(S, lists:duplicate(K, Msg)),
        chat_loop({T, S}, Msg, Stop, Ctr, 2 * I - 1, <<>>)
    catch
        throw:{xmpp, Why} -> Parent ! {login_failed, self(), Why};
        error:{badmatch, Other} -> Parent ! {login_failed, self(), Other}
    end.

%% The negotiated protocol and cipher of a logged-in client, for the report.
tls_info({ssl, Sock}) ->
    {ok, TlsInfo} = ssl:connection_information(Sock, [protocol, selected_cipher_suite]),
    #{cipher := C} = proplists:get_value(selected_cipher_suite, TlsInfo),
    io_lib:format("~s ~s", [proplists:get_value(protocol, TlsInfo), C]);
tls_info({gen_tcp, _}) ->
    "plain TCP".

-define(MSG_END, <<"</message>">>).

chat_loop(TS = {T, S}, Msg, Stop, Ctr, Ix, Tail) ->
    receive
        {Tag, S, Data} when Tag =:= ssl; Tag =:= tcp ->
            %% Count the messages that ended in this chunk; the tail carries a
            %% closing tag split between two chunks.
            %% Tail: the last 11 bytes before Data. A match found again in it
            %% would count twice, so each pattern sees one byte less than itself.
            N = length(binary:matches(<<(last(Tail, 9))/binary, Data/binary>>, ?MSG_END)),
            E = length(binary:matches(<<Tail/binary, Data/binary>>, <<"type='error'">>)),
            counters:add(Ctr, Ix, N),
            E > 0 andalso counters:add(Ctr, Ix + 1, E),
            NewTail = last(<<Tail/binary, Data/binary>>, 11),
            case atomics:get(Stop, 1) of
                0 when N > 0 ->
                    ok = T:send(S, lists:duplicate(N, Msg)),
                    chat_loop(TS, Msg, Stop, Ctr, Ix, NewTail);
                0 ->
                    chat_loop(TS, Msg, Stop, Ctr, Ix, NewTail);
                1 ->
                    finish(TS)
            end;
        {Closed, S} when Closed =:= ssl_closed; Closed =:= tcp_closed ->
            ok;
        {Error, S, _} when Error =:= ssl_error; Error =:= tcp_error ->
            ok
    after 200 ->
        case atomics:get(Stop, 1) of
            1 -> finish(TS);
            0 -> chat_loop(TS, Msg, Stop, Ctr, Ix, Tail)
        end
    end.

last(Bin, N) when byte_size(Bin) =< N -> Bin;
last(Bin, N) -> binary:part(Bin, byte_size(Bin) - N, N).

finish({T, S}) ->
    _ = T:send(S, "</stream:stream>"),
    T:close(S).

%%====================================================================
%% Reports
%%====================================================================

mem_report(#{idle := N, mem_version := V}, Runs) ->
    PerConn = fun(#{before := B, 'after' := A}) -> (rss(A) - rss(B)) * 1024 / N end,
    Mp = [R || R = #{kind := megaphone} <- Runs],
    Ref = [R || R = #{kind := ref} <- Runs],
    Col = fun(Rs, F) -> range([F(R) || R <- Rs], fun megaphone_bench_lib:f1/1) end,
    ColI = fun(Rs, F) -> range([F(R) || R <- Rs], fun megaphone_bench_lib:int/1) end,
    Row = fun(Label, F, Fmt) -> ["| ", Label, " | ", Fmt(Mp, F), " | ", Fmt(Ref, F), " |\n"] end,
    Pairs = [PerConn(M) / max(1.0e-9, PerConn(R))
             || M = #{rep := Rep} <- Mp, R = #{rep := Rep2} <- Ref, Rep =:= Rep2],
    MpPer = [PerConn(M) || M <- Mp],
    Verdict = case lists:max(MpPer) =< 16384 of
                  true -> "met";
                  false -> "NOT met"
              end,
    Anon = fun(#{before := B, 'after' := A}) ->
                   (maps:get('RssAnon', A, 0) - maps:get('RssAnon', B, 0)) * 1024 / N
           end,
    ErlMem = fun(#{mem0 := M0, mem1 := M1}) -> (maps:get(total, M1) - maps:get(total, M0)) / N end,
    [io_lib:format("### a) RSS per idle TLS connection (~b connections, ~s, ~b reps)~n~n", [N, V, length(Mp)]),
     "Each rep uses a fresh server process; min-max over the reps.\n\n",
     "| | Megaphone (Swift, OpenSSL) | Erlang `ssl` server, sockets held |\n|---|---:|---:|\n",
     Row("RSS before (KiB)", fun(R) -> rss(maps:get(before, R)) end, ColI),
     Row("RSS with all connected, idle (KiB)", fun(R) -> rss(maps:get('after', R)) end, ColI),
     Row("**RSS per connection (bytes)**", PerConn, fun(Rs, F) -> ["**", Col(Rs, F), "**"] end),
     Row("RssAnon per connection (bytes)", Anon, Col),
     ["| `erlang:memory(total)` per connection (bytes) | - | ", Col(Ref, ErlMem), " |\n"],
     Row("RSS after the clients left (KiB)", fun(R) -> rss(maps:get(closed, R)) end, ColI),
     Row("time to open all, s (bound by the Erlang clients)", fun(R) -> maps:get(secs, R) end, Col),
     Row("kernel Slab per connection, both ends (bytes)", fun(R) -> maps:get(slab, R) * 1024 / N end, Col),
     ["| connections per reactor | ", lists:join("; ", [maps:get(spread, R) || R <- Mp]), " | - |\n"],
     ["| negotiated | ", maps:get(probe, hd(Mp)), " | ", maps:get(probe, hd(Ref)), " |\n"],
     "\n",
     io_lib:format("Megaphone / Erlang ssl, RSS per connection, per interleaved pair: **~s**~n~n",
                   [range(Pairs, fun megaphone_bench_lib:f2/1)]),
     io_lib:format("Target (<= 16 KB = 16,384 B of Swift RSS per idle TLS connection): ~s B, **~s**.~n~n",
                   [range(MpPer, fun megaphone_bench_lib:f1/1), Verdict]),
     "Megaphone `closed` counters at shutdown (per rep): ",
     lists:join("; ", [io_lib:format("`~0p`", [tls_closed(maps:get(final, R))]) || R <- Mp]),
     "\n\nAll runs, in the order they ran:\n\n",
     "| rep | server | RSS before -> idle (KiB) | bytes/conn | RssAnon bytes/conn | open time (s) |\n",
     "|---:|---|---:|---:|---:|---:|\n",
     [io_lib:format("| ~b | ~s | ~b -> ~b | ~s | ~s | ~s |~n",
                    [Rep, side(K), rss(B), rss(A), f1(PerConn(R)), f1(Anon(R)), f1(maps:get(secs, R))])
      || R = #{rep := Rep, kind := K, before := B, 'after' := A} <- Runs],
     "\n"].

hs_report(#{hs_conc := C, hs_secs := S, cert := Cert}, #{runs := Runs, final := Final}) ->
    Versions = lists:usort([V || #{version := V} <- Runs]),
    G = fun(Rs, K) -> [maps:get(K, R) || R <- Rs] end,
    Summary =
        [[begin
              Rs = [R || R = #{version := V0, kind := K0} <- Runs, V0 =:= V, K0 =:= Kind],
              io_lib:format("| ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s |~n",
                            [V, side(Kind), range(G(Rs, hs_s), fun megaphone_bench_lib:int/1),
                             range(G(Rs, srv_cpu), fun megaphone_bench_lib:f0/1), range(G(Rs, srv_us), fun megaphone_bench_lib:f0/1),
                             range(G(Rs, bench_cpu), fun megaphone_bench_lib:f0/1), range(G(Rs, bench_us), fun megaphone_bench_lib:f0/1),
                             range([element(1, O) || O <- G(Rs, others)], fun megaphone_bench_lib:f0/1),
                             range(G(Rs, failed), fun megaphone_bench_lib:int/1), maps:get(probe, hd(Rs))])
          end || Kind <- [megaphone, ref]]
         || V <- Versions],
    Ratios =
        [begin
             Mp = [R || R = #{version := V0, kind := megaphone} <- Runs, V0 =:= V],
             Rf = [R || R = #{version := V0, kind := ref} <- Runs, V0 =:= V],
             P = fun(K) -> [maps:get(K, M) / max(1.0e-9, maps:get(K, R))
                            || M = #{rep := A} <- Mp, R = #{rep := B} <- Rf, A =:= B] end,
             io_lib:format("| ~s | ~s | ~s |~n", [V, range(P(hs_s), fun megaphone_bench_lib:f2/1), range(P(srv_us), fun megaphone_bench_lib:f2/1)])
         end || V <- Versions],
    Raw =
        [io_lib:format("| ~s | ~b | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s |~n",
                       [V, Rep, side(K), int(maps:get(hs_s, R)), int(maps:get(srv_hs_s, R)),
                        f0(maps:get(srv_cpu, R)), f0(maps:get(srv_us, R)), f0(maps:get(bench_cpu, R)),
                        f0(maps:get(machine_busy, R)), others(maps:get(others, R)),
                        thread_str(K, maps:get(threads, R))])
         || R = #{version := V, rep := Rep, kind := K} <- Runs],
    [io_lib:format("### b) Full TLS handshakes per second (~b concurrent clients, ~b s per run, ~s)~n~n",
                   [C, S, Cert]),
     "Each client: `ssl:connect` (full handshake, no resumption), wait for the server to close, `ssl:close`, ",
     "again. The server closes as soon as its side of the handshake is done (Megaphone: the controller ",
     "answers each `megaphone_connect` with `close`; Erlang: `ssl:close` right after `ssl:handshake`). ",
     "Server CPU per handshake = the server process's CPU time over the window / handshakes the server ",
     "completed in it. ",
     "CPU % is of one core (the machine has ", integer_to_list(erlang:system_info(logical_processors_available)),
     "). The clients (the bench node) run on the same 2 cores.\n\n",
     "| TLS | server | handshakes/s | server CPU % | **server CPU us/handshake** | client CPU % | client CPU us/handshake | other processes CPU % | failed | negotiated |\n",
     "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
     Summary, "\n",
     "| TLS | Megaphone / Erlang handshakes/s (per pair) | Megaphone / Erlang server CPU per handshake (per pair) |\n",
     "|---|---:|---:|\n", Ratios,
     "\nAll runs, in the order they ran:\n\n",
     "| TLS | rep | server | handshakes/s (clients) | handshakes/s (server) | server CPU % | server us/hs | client CPU % | machine busy % of all cores | other processes CPU % | Swift CPU % by thread |\n",
     "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|\n", Raw,
     io_lib:format("~nMegaphone `closed` counters at the end of the handshake runs: `~0p`~n~n",
                   [tls_closed(Final)])].

thread_str(megaphone, Threads) ->
    lists:join(" / ", [[N, " ", f0(P)] || {N, P} <- Threads]);
thread_str(_, _) ->
    "-".

xmpp_report(#{pairs := P, inflight := K, xmpp_secs := S, body := Body, cert := Cert},
            #{runs := Runs, mp_stats := MpStats, ej_info := EjVsn}) ->
    G = fun(Rs, Key) -> [maps:get(Key, R) || R <- Rs] end,
    Kinds = [Kind || Kind <- [megaphone, native, megaphone_tcp, native_tcp],
                     lists:any(fun(#{kind := K0}) -> K0 =:= Kind end, Runs)],
    Summary =
        [begin
             Rs = [R || R = #{kind := K0} <- Runs, K0 =:= Kind],
             Swift = fun(Key, F) -> case via_megaphone(Kind) of
                                        true -> range(G(Rs, Key), F);
                                        false -> "-"
                                    end
                     end,
             io_lib:format("| ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s |~n",
                           [path(Kind), range(G(Rs, msgs_s), fun megaphone_bench_lib:int/1),
                            range(G(Rs, ej_cpu), fun megaphone_bench_lib:f0/1),
                            range(G(Rs, ej_us), fun megaphone_bench_lib:f1/1),
                            Swift(mp_cpu, fun megaphone_bench_lib:f0/1),
                            Swift(mp_us, fun megaphone_bench_lib:f1/1),
                            range([maps:get(ej_us, R) + maps:get(mp_us, R) || R <- Rs],
                                  fun megaphone_bench_lib:f1/1),
                            range(G(Rs, bench_cpu), fun megaphone_bench_lib:f0/1),
                            range(G(Rs, logins_s), fun megaphone_bench_lib:int/1),
                            range(G(Rs, error_stanzas), fun megaphone_bench_lib:int/1),
                            maps:get(probe, hd(Rs))])
         end || Kind <- Kinds],
    Pair = fun(MK, NK, F) ->
                   [F(M, N) || M = #{rep := A, kind := K1} <- Runs, K1 =:= MK,
                               N = #{rep := B, kind := K2} <- Runs, K2 =:= NK, A =:= B]
           end,
    RatioRows =
        fun(MK, NK, Label) ->
                R = fun(F) -> range(Pair(MK, NK, F), fun megaphone_bench_lib:f2/1) end,
                io_lib:format("| ~s | **~s** | ~s | ~s |~n",
                              [Label,
                               R(fun(M, N) -> maps:get(msgs_s, M) / max(1.0e-9, maps:get(msgs_s, N)) end),
                               R(fun(M, N) -> maps:get(ej_us, M) / max(1.0e-9, maps:get(ej_us, N)) end),
                               R(fun(M, N) -> (maps:get(ej_us, M) + maps:get(mp_us, M))
                                                  / max(1.0e-9, maps:get(ej_us, N) + maps:get(mp_us, N))
                                 end)])
        end,
    Raw =
        [io_lib:format("| ~b | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s |~n",
                       [Rep, path(Kind), int(maps:get(msgs_s, R)), f0(maps:get(ej_cpu, R)),
                        f1(maps:get(ej_us, R)), f0(maps:get(mp_cpu, R)), f1(maps:get(mp_us, R)),
                        f0(maps:get(bench_cpu, R)), f0(maps:get(machine_busy, R)),
                        others(maps:get(others, R)), thread_str(megaphone, maps:get(threads, R)),
                        case via_megaphone(Kind) of
                            true -> io_lib:format("~s chunks, ~s B each", [f2(maps:get(chunks_per_msg, R)),
                                                                           int(maps:get(in_per_chunk, R))]);
                            false -> "-"
                        end,
                        f1(maps:get(login_secs, R))])
         || R = #{rep := Rep, kind := Kind} <- Runs],
    [io_lib:format("### c) XMPP messages over TLS: ~b pairs, ~b in flight each way, ~b s per run, ~b-byte bodies (~s)~n~n",
                   [P, K, S, Body, Cert]),
     io_lib:format("ejabberd ~s (isolated instance). Both TLS paths are direct TLS (XEP-0368): ejabberd's own "
                   "`ejabberd_c2s` listener with `tls: true` (fast_tls), and mod_megaphone with a Megaphone "
                   "node listening `transport: tls`. The same clients (the bench node, Erlang `ssl`), the "
                   "same certificate. Delivered = `</message>` received by the clients. CPU us per delivered "
                   "message; % of one core. The Swift figures of the native paths are the idle Megaphone "
                   "node (a check that it was idle).~n~n", [EjVsn]),
     "| path | delivered msgs/s | ejabberd CPU % | **ejabberd us/msg** | Swift CPU % | Swift us/msg | ejabberd + Swift us/msg | clients CPU % | logins/s | error stanzas | negotiated |\n",
     "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
     Summary, "\n",
     "| per interleaved pair | Megaphone / native delivered msgs/s | ejabberd CPU per message | ejabberd + Swift CPU per message |\n",
     "|---|---:|---:|---:|\n",
     RatioRows(megaphone, native, "TLS"),
     [RatioRows(megaphone_tcp, native_tcp, "plain TCP (context)") || lists:member(native_tcp, Kinds)],
     "\nAll runs, in the order they ran:\n\n",
     "| rep | path | msgs/s | ejabberd CPU % | ejabberd us/msg | Swift CPU % | Swift us/msg | clients CPU % | machine busy % of all cores | other processes CPU % | Swift CPU % by thread | per delivered message: chunks to ejabberd (`chunks_delivered`), bytes per chunk | login of all users (s) |\n",
     "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|\n", Raw,
     io_lib:format("~nMegaphone node (ejabberd's) `closed` counters after the runs: `~0p`~n~n",
                   [tls_closed(MpStats)])].

via_megaphone(megaphone) -> true;
via_megaphone(megaphone_tcp) -> true;
via_megaphone(_) -> false.

side(megaphone) -> "Megaphone";
side(ref) -> "Erlang ssl".

path(megaphone) -> "Megaphone `transport: tls` -> mod_megaphone";
path(native) -> "ejabberd c2s `tls: true`";
path(megaphone_tcp) -> "(plain TCP) Megaphone `transport: tcp` -> mod_megaphone";
path(native_tcp) -> "(plain TCP) ejabberd c2s".
