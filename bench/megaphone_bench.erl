%%% Megaphone benchmark: memory per idle connection and chunk throughput over
%%% the distribution link, each side by side with an Erlang-native reference
%%% measured in the same run. Started by bench/run, which also starts the
%%% Swift node and the reference nodes; see bench/README.md.
%%%
%%%   erl -sname B -setcookie C -noshell -pa DIR -run megaphone_bench main \
%%%       mp=NODE mp_pid=OSPID refs=REF1,REF2 [idle=15000] [conns=32] [secs=5]
%%%       [warmup=1] [reps=2] [chunks=100,16384] [write=65536] [clk_tck=100]
%%%       [only=all|mem|tput]
%%%
%%% The markdown report goes to stdout, progress to stderr. Exit status 0 on
%%% success, 1 on any failure (with the reason on stderr).
-module(megaphone_bench).

-export([main/1]).

-import(megaphone_bench_lib, [report_and_halt/1, fail/2, progress/2, connect_node/2, rpc/4, stop_node/1,
                              mp_call/4, mp_stats/1, mp_connections/1, mp_shutdown/1,
                              receive_connects/3, reactors/1, reactor_spread/2, wait_until/3,
                              flush_mailbox/0, interleave/2, timed/1, delta/2, sum_counters/2,
                              proc_status/1, rss/1, cpu_ticks/1, thread_ticks/1, other_cpu/5,
                              slab_kb/0, others/1, thread_label/1, range/2, mean/1, ratio/2,
                              int/1, f0/1, f1/1, f2/1]).

-define(MB, 1000000).

%%====================================================================
%% Entry point
%%====================================================================

main(Args) ->
    report_and_halt(fun() -> run(parse_args(Args)) end).

parse_args(Args) ->
    Defaults = #{idle => 15000, conns => 32, secs => 5, warmup => 1, reps => 2,
                 chunks => [100, 16384], write => 65536, clk_tck => 100, only => all,
                 refs => []},
    lists:foldl(fun parse_arg/2, Defaults, Args).

parse_arg(Arg, O) ->
    case string:split(Arg, "=") of
        ["mp", V] -> O#{mp => list_to_atom(V)};
        ["mp_pid", V] -> O#{mp_pid => V};
        ["refs", V] -> O#{refs => [list_to_atom(R) || R <- string:lexemes(V, ","), R =/= ""]};
        ["chunks", V] -> O#{chunks => [list_to_integer(C) || C <- string:lexemes(V, ",")]};
        ["only", V] -> O#{only => list_to_atom(V)};
        [K, V] when K =:= "idle"; K =:= "conns"; K =:= "secs"; K =:= "warmup";
                    K =:= "reps"; K =:= "write"; K =:= "clk_tck" ->
            O#{list_to_atom(K) => list_to_integer(V)};
        _ -> fail("bad argument ~s", [Arg])
    end.

%%====================================================================
%% The run
%%====================================================================

run(O = #{mp := MP, mp_pid := MpPid, only := Only}) ->
    %% The measuring process must get the CPU on time even when the
    %% machine is saturated by the measured traffic.
    process_flag(priority, high),
    connect_node(MP, 20000),
    progress("connected to ~s (OS pid ~s)", [MP, MpPid]),
    ListenSpec = [{tcp, {127, 0, 0, 1}, 0}],
    Info = mp_start(MP, ListenSpec, 65536),
    Port = mp_port(Info),
    progress("megaphone listening on 127.0.0.1:~b; start reply: ~0p", [Port, Info]),
    O1 = O#{port => Port, listen => ListenSpec, reactors => reactors(MpPid)},
    Mem = case Only of
              tput -> [];
              _ -> memory_section(O1)
          end,
    Tput = case Only of
               mem -> [];
               _ -> throughput_section(O1)
           end,
    Final = mp_shutdown(MP),
    progress("megaphone stopped; final stats: ~0p", [Final]),
    report(O1, Mem, Tput, Final).

%%====================================================================
%% Talking to the Swift node
%%====================================================================

mp_start(MP, ListenSpec, MaxChunk) ->
    Opts = [{listen, ListenSpec}, {max_chunk, MaxChunk}, {send_queue_limit, 1 bsl 20}],
    mp_call(MP, fun(Ref) -> {start, self(), Ref, Opts} end, megaphone_started, 10000).

mp_port(#{listeners := [{tcp, _IP, Port}]}) -> Port;
mp_port(Info) -> fail("unexpected start reply ~p", [Info]).

%%====================================================================
%% a) memory per idle connection
%%====================================================================

memory_section(O = #{mp := MP, mp_pid := MpPid, port := Port, idle := N, refs := Refs,
                     reactors := Reactors}) ->
    progress("memory: megaphone, ~b idle connections", [N]),
    wait_until(fun() -> mp_connections(MP) =:= 0 end, 30000, "megaphone connections = 0"),
    flush_mailbox(),
    garbage_collect(),
    Before = proc_status(MpPid),
    Slab0 = slab_kb(),
    T0 = erlang:monotonic_time(millisecond),
    Holder = open_clients(Port, N),
    wait_until(fun() -> mp_connections(MP) >= N end, 120000,
               io_lib:format("megaphone connections = ~b", [N])),
    Connects = receive_connects(N, 30000, tcp),
    T1 = erlang:monotonic_time(millisecond),
    After = proc_status(MpPid),
    Slab1 = slab_kb(),
    Stats = mp_stats(MP),
    length(Connects) =:= N orelse fail("got ~b megaphone_connect messages, expected ~b",
                                       [length(Connects), N]),
    progress("memory: megaphone RSS ~b -> ~b KiB (~.1f B/conn)",
             [rss(Before), rss(After), (rss(After) - rss(Before)) * 1024 / N]),
    close_clients(Holder),
    wait_until(fun() -> mp_connections(MP) =:= 0 end, 60000, "megaphone connections = 0 after close"),
    Closed = proc_status(MpPid),
    flush_mailbox(),
    MpRes = #{name => "Megaphone (Swift node)", before => Before, 'after' => After,
              closed => Closed, secs => (T1 - T0) / 1000, slab => Slab1 - Slab0,
              stats => Stats, spread => reactor_spread(Connects, Reactors)},
    RefRes = [memory_ref(O, Ref, Mode) || {Ref, Mode} <- lists:zip(Refs, lists:sublist([process, held], length(Refs)))],
    [MpRes | RefRes].

memory_ref(#{idle := N}, RefNode, Mode) ->
    progress("memory: native reference (~p) on ~s, ~b idle connections", [Mode, RefNode, N]),
    connect_node(RefNode, 20000),
    {module, _} = rpc(RefNode, code, ensure_loaded, [megaphone_bench_ref]),
    {ok, Port} = rpc(RefNode, megaphone_bench_ref, listen, [Mode]),
    OsPid = rpc(RefNode, os, getpid, []),
    Mem0 = rpc(RefNode, megaphone_bench_ref, memory, []),
    Before = proc_status(OsPid),
    Slab0 = slab_kb(),
    T0 = erlang:monotonic_time(millisecond),
    Holder = open_clients(Port, N),
    wait_until(fun() -> rpc(RefNode, megaphone_bench_ref, count, []) >= N end, 120000,
               io_lib:format("reference accepted = ~b", [N])),
    T1 = erlang:monotonic_time(millisecond),
    After = proc_status(OsPid),
    Slab1 = slab_kb(),
    Mem1 = rpc(RefNode, megaphone_bench_ref, memory, []),
    progress("memory: reference ~p RSS ~b -> ~b KiB (~.1f B/conn)",
             [Mode, rss(Before), rss(After), (rss(After) - rss(Before)) * 1024 / N]),
    close_clients(Holder),
    case Mode of
        process ->
            wait_until(fun() -> rpc(RefNode, megaphone_bench_ref, count, []) =:= 0 end, 60000,
                       "reference handlers gone");
        held ->
            ok
    end,
    ok = rpc(RefNode, megaphone_bench_ref, stop, []),
    Closed = proc_status(OsPid),
    %% Done with this node: stop it, so that it cannot take CPU from the
    %% throughput runs (bench/run still stops it by PID if it lingers).
    stop_node(RefNode),
    Name = case Mode of
               process -> "Erlang gen_tcp, process per socket";
               held -> "Erlang gen_tcp, sockets held in a list"
           end,
    #{name => Name, before => Before, 'after' => After, closed => Closed,
      secs => (T1 - T0) / 1000, slab => Slab1 - Slab0, mem0 => Mem0, mem1 => Mem1}.

%% A process that opens N client sockets to 127.0.0.1:Port and holds them
%% until close_clients/1. linger 0: closing sends RST, so no TIME_WAIT piles up.
open_clients(Port, N) ->
    Parent = self(),
    Pid = spawn(fun() ->
                        Socks = open_n(Port, N, []),
                        Parent ! {clients_opened, self(), length(Socks)},
                        receive close -> [gen_tcp:close(S) || S <- Socks] end
                end),
    MRef = erlang:monitor(process, Pid),
    receive
        {clients_opened, Pid, N} -> erlang:demonitor(MRef, [flush]), {Pid, MRef};
        {'DOWN', MRef, _, _, Reason} -> fail("opening ~b clients failed: ~p", [N, Reason])
    after 180000 ->
        exit(Pid, kill),
        fail("opening ~b clients timed out", [N])
    end.

open_n(_Port, 0, Acc) ->
    Acc;
open_n(Port, N, Acc) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, client_opts(), 30000) of
        {ok, S} -> open_n(Port, N - 1, [S | Acc]);
        {error, Reason} -> exit({connect, length(Acc), Reason})
    end.

client_opts() ->
    [binary, {active, false}, {linger, {true, 0}}, {nodelay, true}].

close_clients({Pid, _}) ->
    MRef = erlang:monitor(process, Pid),
    Pid ! close,
    receive {'DOWN', MRef, _, _, _} -> ok end.

%%====================================================================
%% b) chunk throughput
%%====================================================================

throughput_section(O = #{reps := Reps, chunks := Chunks}) ->
    lists:append(
      [begin
           [tput_run(O, Kind, Chunk, Rep) || Kind <- interleave(Rep, [megaphone, native])]
       end || Rep <- lists:seq(1, Reps), Chunk <- Chunks]).

tput_run(O = #{conns := C, secs := Secs}, Kind, Chunk, Rep) ->
    progress("throughput: ~p, chunk ~b B, ~b connections, ~b s (rep ~b)", [Kind, Chunk, C, Secs, Rep]),
    R = case Kind of
            megaphone -> tput_megaphone(O, Chunk);
            native -> tput_native(O, Chunk)
        end,
    progress("  -> ~s chunks/s, ~s MB/s, avg chunk ~s B, CPU: swift ~s%, bench ~s%, others ~s",
             [int(maps:get(chunks_s, R)), f1(maps:get(mb_s, R)), int(maps:get(avg_chunk, R)),
              f0(maps:get(swift_cpu, R)), f0(maps:get(bench_cpu, R)), others(maps:get(others, R))]),
    R#{kind => Kind, chunk => Chunk, rep => Rep}.

tput_megaphone(O = #{mp := MP, mp_pid := MpPid, listen := ListenSpec, port := Port, conns := C,
                     reactors := Reactors}, Chunk) ->
    wait_until(fun() -> mp_connections(MP) =:= 0 end, 30000, "megaphone connections = 0"),
    Info = mp_start(MP, ListenSpec, Chunk),
    case mp_port(Info) of
        Port -> ok;
        Other -> fail("reconfiguring max_chunk moved the listener from port ~b to ~b", [Port, Other])
    end,
    flush_mailbox(),
    Ctr = counters:new(2 * C, [write_concurrency]),
    Socks = [connect_one(Port) || _ <- lists:seq(1, C)],
    ConnIds = receive_connects(C, 10000, tcp),
    length(ConnIds) =:= C orelse fail("got ~b megaphone_connect messages, expected ~b",
                                      [length(ConnIds), C]),
    Dest = {megaphone, MP},
    Spread = reactor_spread(ConnIds, Reactors),
    Readers = [spawn(fun() -> mp_reader(Dest, Id, Ctr, 2 * I - 1, Chunk) end)
               || {I, Id} <- lists:zip(lists:seq(1, C), ConnIds)],
    Writers = [spawn_writer(S, O) || S <- Socks],
    R = measure(O, Ctr, fun() -> {mp_stats(MP), thread_ticks(MpPid)} end),
    [exit(P, kill) || P <- Writers ++ Readers],
    wait_until(fun() -> mp_connections(MP) =:= 0 end, 60000, "megaphone connections = 0 after run"),
    flush_mailbox(),
    R#{spread => Spread}.

%% One get_data in flight per connection, like an ejabberd_c2s in {active, once}.
mp_reader(Dest, ConnId, Ctr, Ix, Chunk) ->
    Dest ! {get_data, self(), ConnId},
    receive
        {tcp, ConnId, Bin} when byte_size(Bin) =< Chunk ->
            counters:add(Ctr, Ix, 1),
            counters:add(Ctr, Ix + 1, byte_size(Bin)),
            mp_reader(Dest, ConnId, Ctr, Ix, Chunk);
        {tcp, ConnId, Bin} ->
            exit({chunk_larger_than_max_chunk, byte_size(Bin), Chunk});
        {tcp_closed, ConnId} ->
            ok;
        {tcp_error, ConnId, _} ->
            ok
    end.

tput_native(O = #{conns := C}, Chunk) ->
    {ok, L} = gen_tcp:listen(0, [binary, {active, false}, {packet, raw}, {reuseaddr, true},
                                 {ip, {127, 0, 0, 1}}, {backlog, 1024}]),
    {ok, Port} = inet:port(L),
    Ctr = counters:new(2 * C, [write_concurrency]),
    Parent = self(),
    Acceptor = spawn(fun() -> native_acceptor(Parent, L, Ctr, Chunk, 1, C, []) end),
    Socks = [connect_one(Port) || _ <- lists:seq(1, C)],
    Readers = receive
                  {native_readers, Acceptor, Rs} -> Rs
              after 10000 ->
                  fail("native acceptor did not accept ~b connections", [C])
              end,
    Writers = [spawn_writer(S, O) || S <- Socks],
    R = measure(O, Ctr, fun() -> none end),
    [exit(P, kill) || P <- Writers ++ Readers],
    gen_tcp:close(L),
    R.

native_acceptor(Parent, _L, _Ctr, _Chunk, I, C, Acc) when I > C ->
    Parent ! {native_readers, self(), Acc};
native_acceptor(Parent, L, Ctr, Chunk, I, C, Acc) ->
    {ok, S} = gen_tcp:accept(L),
    Pid = spawn(fun() -> receive {go, Sock} -> native_reader(Sock, Ctr, 2 * I - 1, Chunk) end end),
    ok = gen_tcp:controlling_process(S, Pid),
    Pid ! {go, S},
    native_acceptor(Parent, L, Ctr, Chunk, I + 1, C, [Pid | Acc]).

%% Passive mode, fixed-size chunks.
native_reader(S, Ctr, Ix, Chunk) ->
    case gen_tcp:recv(S, Chunk) of
        {ok, Bin} ->
            counters:add(Ctr, Ix, 1),
            counters:add(Ctr, Ix + 1, byte_size(Bin)),
            native_reader(S, Ctr, Ix, Chunk);
        {error, _} ->
            ok
    end.

connect_one(Port) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, client_opts(), 10000) of
        {ok, S} -> S;
        {error, Reason} -> fail("connect to port ~b: ~p", [Port, Reason])
    end.

%% A client that writes continuously in big writes; blocks when the server
%% side does not read (TCP flow control).
spawn_writer(S, #{write := Size}) ->
    Bin = binary:copy(<<"0123456789abcdef">>, Size div 16),
    Pid = spawn(fun() -> receive go -> write_loop(S, Bin) end end),
    ok = gen_tcp:controlling_process(S, Pid),
    Pid ! go,
    Pid.

write_loop(S, Bin) ->
    case gen_tcp:send(S, Bin) of
        ok -> write_loop(S, Bin);
        {error, _} -> ok
    end.

%% Warm-up, then counters and CPU over `secs'.
measure(#{warmup := Warmup, secs := Secs, conns := C, mp_pid := MpPid, clk_tck := Hz}, Ctr, Snap) ->
    timer:sleep(Warmup * 1000),
    BenchPid = os:getpid(),
    %% Every reading carries its own timestamp, taken right after it, so that
    %% a slow read (a loaded machine) does not stretch the window of another.
    X0 = timed(Snap),
    All0 = timed(fun megaphone_bench_lib:all_proc_ticks/0),
    Sys0 = timed(fun megaphone_bench_lib:system_cpu/0),
    Sw0 = timed(fun() -> cpu_ticks(MpPid) end),
    Be0 = timed(fun() -> cpu_ticks(BenchPid) end),
    Ch0 = timed(fun() -> sum_counters(Ctr, C) end),
    timer:sleep(Secs * 1000),
    Ch1 = timed(fun() -> sum_counters(Ctr, C) end),
    Be1 = timed(fun() -> cpu_ticks(BenchPid) end),
    Sw1 = timed(fun() -> cpu_ticks(MpPid) end),
    Sys1 = timed(fun megaphone_bench_lib:system_cpu/0),
    All1 = timed(fun megaphone_bench_lib:all_proc_ticks/0),
    X1 = timed(Snap),
    {{Chunks, Bytes}, Dt} = delta(Ch0, Ch1),
    CpuPct = fun(A, B) -> {Ticks, D} = delta(A, B), 100 * Ticks / Hz / D end,
    {{All0v, _}, {All1v, _}} = {All0, All1},
    {_, DtAll} = delta(setelement(1, All0, 0), setelement(1, All1, 0)),
    {{Busy, Total}, _} = delta(Sys0, Sys1),
    #{secs => Dt, chunks => Chunks, bytes => Bytes, snap => {X0, X1}, clk_tck => Hz,
      chunks_s => Chunks / Dt, mb_s => Bytes / Dt / ?MB,
      avg_chunk => case Chunks of 0 -> 0.0; _ -> Bytes / Chunks end,
      swift_cpu => CpuPct(Sw0, Sw1),
      bench_cpu => CpuPct(Be0, Be1),
      machine_busy => case Total of
                          0 -> 0.0;
                          _ -> 100 * Busy / Total
                      end,
      %% Every other process (kernel threads included), in % of one core:
      %% a quiet machine shows ~0 here.
      others => other_cpu(All0v, All1v, [MpPid, BenchPid], Hz, DtAll)}.

%%====================================================================
%% Report
%%====================================================================

report(O, Mem, Tput, Final) ->
    [header(O), memory_report(O, Mem), throughput_report(O, Tput), final_report(Final)].

header(#{idle := N, conns := C, secs := S, warmup := W, reps := R, write := Wr}) ->
    io_lib:format("~n## Megaphone benchmark~n~n"
                  "Parameters: idle=~b, conns=~b, secs=~b (after ~b s warm-up), reps=~b, client write size=~b B.~n"
                  "Bench node: OTP ~s, ~b schedulers.~n~n",
                  [N, C, S, W, R, Wr, erlang:system_info(otp_release),
                   erlang:system_info(schedulers_online)]).

memory_report(_O, []) ->
    "";
memory_report(#{idle := N}, Mem = [MpRes | Refs]) ->
    PerConn = fun(#{before := B, 'after' := A}) -> (rss(A) - rss(B)) * 1024 / N end,
    Cols = [maps:get(name, M) || M <- Mem],
    Row = fun(Label, F) -> ["| ", Label, " | ", lists:join(" | ", [F(M) || M <- Mem]), " |\n"] end,
    Table =
        ["| ", integer_to_list(N), " idle connections | ", lists:join(" | ", Cols), " |\n",
         "|---|", lists:duplicate(length(Mem), "---:|"), "\n",
         Row("RSS before (KiB)", fun(M) -> int(rss(maps:get(before, M))) end),
         Row("RSS with all connected (KiB)", fun(M) -> int(rss(maps:get('after', M))) end),
         Row("**RSS delta per connection (bytes)**", fun(M) -> ["**", f1(PerConn(M)), "**"] end),
         Row("RssAnon delta per connection (bytes)",
             fun(#{before := B, 'after' := A}) ->
                     f1((maps:get('RssAnon', A, 0) - maps:get('RssAnon', B, 0)) * 1024 / N)
             end),
         Row("erlang:memory(total) delta per connection (bytes)",
             fun(#{mem0 := M0, mem1 := M1}) -> f1((maps:get(total, M1) - maps:get(total, M0)) / N);
                (_) -> "n/a"
             end),
         Row("RSS after clients closed (KiB)", fun(M) -> int(rss(maps:get(closed, M))) end),
         Row("connections per reactor (reactor-0 / reactor-1 / ...)", fun(M) -> maps:get(spread, M, "-") end),
         Row("OS threads", fun(M) -> int(maps:get('Threads', maps:get('after', M))) end),
         Row("time to open and accept all (s; bound by the client's connects)", fun(M) -> f2(maps:get(secs, M)) end),
         Row("kernel Slab delta per connection, both ends (bytes)",
             fun(M) -> f1(maps:get(slab, M) * 1024 / N) end)],
    MpPer = PerConn(MpRes),
    Ratios = [io_lib:format("- Megaphone / ~s: **~s**~n", [maps:get(name, R), ratio(MpPer, PerConn(R))])
              || R <- Refs],
    Verdict = case MpPer =< 256 of
                  true -> "within";
                  false -> "ABOVE"
              end,
    ["### a) Memory per idle connection\n\n", Table, "\n",
     "RSS ratio per connection:\n", Ratios,
     io_lib:format("- Design target (<= 256 B of Swift RSS per idle plain connection): ~s B, ~s target.~n~n",
                   [f1(MpPer), Verdict])].

throughput_report(_O, []) ->
    "";
throughput_report(#{conns := C, secs := S}, Runs) ->
    Chunks = lists:usort([maps:get(chunk, R) || R <- Runs]),
    Summary =
        ["| chunk | side | chunks/s (min-max) | MB/s (min-max) | avg chunk (B) | Swift CPU % | bench node CPU % | other processes CPU % |\n",
         "|---:|---|---:|---:|---:|---:|---:|---:|\n",
         [[summary_row(Chunk, Kind, [R || R <- Runs, maps:get(chunk, R) =:= Chunk,
                                           maps:get(kind, R) =:= Kind])
           || Kind <- [megaphone, native]]
          || Chunk <- Chunks]],
    RatioRows =
        ["| chunk | Megaphone/native chunks/s, per interleaved pair (min-max) | ratio of means |\n",
         "|---:|---:|---:|\n",
         [begin
              Mp = [R || R <- Runs, maps:get(chunk, R) =:= Chunk, maps:get(kind, R) =:= megaphone],
              Na = [R || R <- Runs, maps:get(chunk, R) =:= Chunk, maps:get(kind, R) =:= native],
              Pairs = [maps:get(chunks_s, M) / max(1.0e-9, maps:get(chunks_s, N))
                       || M <- Mp, N <- Na, maps:get(rep, M) =:= maps:get(rep, N)],
              MeanMp = mean([maps:get(chunks_s, R) || R <- Mp]),
              MeanNa = mean([maps:get(chunks_s, R) || R <- Na]),
              io_lib:format("| ~s | ~s | ~s |~n",
                            [size_label(Chunk), range(Pairs, fun megaphone_bench_lib:f2/1), ratio(MeanMp, MeanNa)])
          end || Chunk <- Chunks]],
    Raw =
        ["| rep | chunk | side | chunks/s | MB/s | Swift CPU % | bench CPU % | machine busy % of all cores | other processes CPU % (top) | Swift chunks_delivered/s | Swift CPU % by thread | conns per reactor |\n",
         "|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---|---|\n",
         [io_lib:format("| ~b | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s |~n",
                        [maps:get(rep, R), size_label(maps:get(chunk, R)), side(maps:get(kind, R)),
                         int(maps:get(chunks_s, R)), f1(maps:get(mb_s, R)),
                         f0(maps:get(swift_cpu, R)), f0(maps:get(bench_cpu, R)),
                         f0(maps:get(machine_busy, R)), others(maps:get(others, R)),
                         swift_rate(R), swift_threads(R),
                         maps:get(spread, R, "-")])
          || R <- Runs]],
    [io_lib:format("### b) Chunk throughput, client -> reader process (~b connections, ~b s per run)~n~n",
                   [C, S]),
     "CPU % is of one core (100 = one core busy; the machine has ", integer_to_list(erlang:system_info(logical_processors_available)), " cores). ",
     "\"Other processes\" is every other process on the machine, kernel threads included ",
     "(e.g. ksoftirqd doing loopback TCP work): if it is large, the machine was not quiet. ",
     "MB = 10^6 bytes.\n\n",
     Summary, "\n", RatioRows, "\nAll runs, in the order they ran:\n\n", Raw, "\n"].

summary_row(_Chunk, _Kind, []) ->
    "";
summary_row(Chunk, Kind, Rs) ->
    G = fun(K) -> [maps:get(K, R) || R <- Rs] end,
    io_lib:format("| ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~s |~n",
                  [size_label(Chunk), side(Kind), range(G(chunks_s), fun megaphone_bench_lib:int/1),
                   range(G(mb_s), fun megaphone_bench_lib:f1/1), range(G(avg_chunk), fun megaphone_bench_lib:int/1),
                   range(G(swift_cpu), fun megaphone_bench_lib:f0/1), range(G(bench_cpu), fun megaphone_bench_lib:f0/1),
                   range([element(1, O) || O <- G(others)], fun megaphone_bench_lib:f0/1)]).

swift_rate(#{snap := {{{S0 = #{}, _}, TS0}, {{S1 = #{}, _}, TS1}}}) ->
    %% Swift's own count over (nearly) the same window: a cross-check.
    Dt = (TS1 - TS0) / 1.0e6,
    D = maps:get(chunks_delivered, S1, 0) - maps:get(chunks_delivered, S0, 0),
    int(D / Dt);
swift_rate(_) ->
    "-".

%% Swift CPU % per thread over the measured window: "dist 90 / reactor-0 40 / ...".
swift_threads(#{snap := {{{_, T0}, TS0}, {{_, T1}, TS1}}, clk_tck := Hz}) ->
    Dt = (TS1 - TS0) / 1.0e6,
    lists:join(" / ", [[thread_label(Name), " ", f0(100 * (Ticks - proplists:get_value(Name, T0, 0)) / Hz / Dt)]
                       || {Name, Ticks} <- T1]);
swift_threads(_) ->
    "-".

side(megaphone) -> "Megaphone";
side(native) -> "native gen_tcp:recv".

final_report(Final) ->
    io_lib:format("### Swift node's final stats (shutdown reply)~n~n```~n~p~n```~n", [Final]).

size_label(B) when B >= 1024, B rem 1024 =:= 0 -> integer_to_list(B div 1024) ++ " KiB";
size_label(B) -> integer_to_list(B) ++ " B".

