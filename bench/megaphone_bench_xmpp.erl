%%% bench/xmpp's measuring side: runs in the driver's controller node (a
%%% hidden node the Python driver talks to, see Tests/integration/harness/erl_helper.py
%%% ErlHelper) and drives the load clients (megaphone_bench_load pools) in the
%%% client nodes. Each exported function is one measurement; it returns a
%%% map the driver turns into the report. Every failure throws (fail/2) with
%%% a readable reason; the driver then stops everything and exits non-zero.
%%%
%%% Cfg keys shared by all runs:
%%%   ej        ejabberd's node          ej_pid   its beam's OS pid (string)
%%%   ejs       [{EjNode, OsPid}]        every ejabberd node of the cluster
%%%                                      (--cluster K), ej first; default [{ej, ej_pid}].
%%%                                      CPU, RSS and erlang:memory() are summed over them
%%%                                      (and kept per node, `per_ej'); session counts are
%%%                                      the cluster's (the session table is replicated)
%%%   mp        [{MegaphoneNode, OsPid}] every Megaphone node (Swift)
%%%   clients   [{ClientNode, SrcIp}]    one pool per client node
%%%   ports     [Port]                   the XMPP port each client node connects to
%%%   resource  binary (unique per run)  concurrency  logins in flight per pool
%%%   clk_tck   the kernel's clock ticks per second
%%%   tls       none | starttls: the clients run STARTTLS before they log in
-module(megaphone_bench_xmpp).

-export([prepare/1, mem_run/1, msg_run/1, scale_run/1]).

-import(megaphone_bench_lib, [fail/2, progress/2, connect_node/2, rpc/4, ej_started/1, wait_until/3,
                              deadline/1, remaining/1, per/2, proc_status/1, rss/1, cpu_ticks/1,
                              system_cpu/0, slab_kb/0]).

-define(LOGIN_TIMEOUT, 600000).
%% The parts of erlang:memory() reported per session (`system' includes
%% binary, ets, atom and code; NIF allocations such as fxml's parsers count
%% in `system' only).
-define(MEM_PARTS, [total, processes, system, binary, ets, atom, code]).

%%====================================================================
%% API
%%====================================================================

%% Connects to every node, registers users 1..N in one rpc, and reads the
%% limits that matter for the scale run.
-spec prepare(map()) -> map().
prepare(Cfg) ->
    isolated(fun() -> do_prepare(norm(Cfg)) end).

%% N idle sessions: login rate and CPU per login, then memory per session.
-spec mem_run(map()) -> map().
mem_run(Cfg) ->
    isolated(fun() -> do_mem_run(norm(Cfg)) end).

%% P pairs chatting with K in flight each way: msgs/s, CPU per message,
%% latency, sequence checks.
-spec msg_run(map()) -> map().
msg_run(Cfg) ->
    isolated(fun() -> do_msg_run(norm(Cfg)) end).

%% N sessions held for `hold' seconds, checked every 10 s and pinged at the end.
-spec scale_run(map()) -> map().
scale_run(Cfg) ->
    isolated(fun() -> do_scale_run(norm(Cfg)) end).

%% OS pids come as binaries from the driver; /proc paths want strings.
norm(Cfg = #{ej := Ej, ej_pid := EjPid, mp := MPs}) ->
    Ejs = maps:get(ejs, Cfg, [{Ej, EjPid}]),
    Cfg#{ej_pid := str(EjPid), mp := [{N, str(P)} || {N, P} <- MPs], ejs => [{N, str(P)} || {N, P} <- Ejs]}.

str(B) when is_binary(B) -> binary_to_list(B);
str(L) -> L.

%% Runs F in a fresh process (the caller's mailbox stays clean) with a high
%% priority, so that measurements are taken on time on a saturated machine.
isolated(F) ->
    {Pid, Mon} = spawn_monitor(fun() ->
                                       process_flag(priority, high),
                                       exit({done, try {ok, F()} catch throw:{bench_error, M} -> {error, M} end})
                               end),
    receive
        {'DOWN', Mon, process, Pid, {done, {ok, V}}} -> V;
        {'DOWN', Mon, process, Pid, {done, {error, M}}} -> fail("~s", [M]);
        {'DOWN', Mon, process, Pid, Other} -> fail("~p", [Other])
    end.

%%====================================================================
%% prepare
%%====================================================================

do_prepare(Cfg = #{ej := Ej, ejs := Ejs, mp := MPs, clients := Clients, users := N}) ->
    [begin
         connect_node(E, 30000),
         wait_until(fun() -> ej_started(E) end, 60000, "ejabberd to be started")
     end || {E, _} <- Ejs],
    [connect_node(MP, 30000) || {MP, _} <- MPs],
    [connect_node(C, 30000) || {C, _} <- Clients],
    [{module, _} = rpc(C, code, ensure_loaded, [megaphone_bench_load]) || {C, _} <- Clients],
    progress("registering ~b users in one rpc", [N]),
    T0 = erlang:monotonic_time(millisecond),
    register_users(Ej, N),
    RegMs = erlang:monotonic_time(millisecond) - T0,
    progress("registered in ~b ms", [RegMs]),
    #{ej_version => rpc(Ej, ejabberd_config, get_version, []),
      process_limit => rpc(Ej, erlang, system_info, [process_limit]),
      port_limit => rpc(Ej, erlang, system_info, [port_limit]),
      ets_limit => rpc(Ej, erlang, system_info, [ets_limit]),
      ej_fd_limit => fd_limit(maps:get(ej_pid, Cfg)),
      mp_fd_limits => [fd_limit(P) || {_, P} <- MPs],
      client_fd_limits => [fd_limit(rpc(C, os, getpid, [])) || {C, _} <- Clients],
      reg_ms => RegMs}.

%% "Max open files" soft limit of an OS process.
fd_limit(OsPid) ->
    {ok, B} = file:read_file("/proc/" ++ OsPid ++ "/limits"),
    {match, [V]} = re:run(B, "Max open files\\s+(\\S+)", [{capture, all_but_first, binary}]),
    case V of
        <<"unlimited">> -> unlimited;
        _ -> binary_to_integer(V)
    end.

user(I) -> <<"xb", (integer_to_binary(I))/binary>>.
password(I) -> <<"pw", (integer_to_binary(I))/binary>>.

%% One rpc into ejabberd that loops over ejabberd_auth:try_register/3 (the
%% loop is evaluated there by erl_eval: no code of ours is loaded into it).
register_users(Ej, N) ->
    Src = "Reg = fun Reg(I, Bad) when I > N -> Bad;"
          "          Reg(I, Bad) ->"
          "              S = integer_to_binary(I),"
          "              case ejabberd_auth:try_register(<<\"xb\", S/binary>>, <<\"localhost\">>,"
          "                                              <<\"pw\", S/binary>>) of"
          "                  ok -> Reg(I + 1, Bad);"
          "                  {error, exists} -> Reg(I + 1, Bad);"
          "                  E -> Reg(I + 1, [{I, E} | Bad])"
          "              end"
          "      end,"
          "Reg(1, []).",
    case eval_on(Ej, Src, [{'N', N}], 600000) of
        {value, [], _} -> ok;
        {value, Bad, _} -> fail("registering users failed for ~b of them, e.g. ~p",
                                [length(Bad), lists:sublist(Bad, 3)]);
        Other -> fail("registering users: ~p", [Other])
    end.

%%====================================================================
%% Readings
%%====================================================================

%% A snapshot of every figure a run compares. ej_mem is erlang:memory(total);
%% ej_mem_parts the parts the report breaks it into (?MEM_PARTS). The ejabberd
%% figures are sums over the cluster's nodes; per_ej has each node's.
read(#{ejs := Ejs, mp := MPs}) ->
    PerEj = maps:from_list([{E, read_ej(E, P)} || {E, P} <- Ejs]),
    Sum = fun(K) -> lists:sum([maps:get(K, R) || R <- maps:values(PerEj)]) end,
    #{t => erlang:monotonic_time(microsecond),
      ej_rss => Sum(ej_rss),
      ej_mem => Sum(ej_mem),
      ej_mem_parts => maps:from_list([{K, lists:sum([maps:get(K, maps:get(ej_mem_parts, R))
                                                      || R <- maps:values(PerEj)])} || K <- ?MEM_PARTS]),
      per_ej => PerEj,
      mp_rss => lists:sum([rss(proc_status(P)) || {_, P} <- MPs]),
      slab => slab_kb(),
      ej_cpu => Sum(ej_cpu),
      mp_cpu => lists:sum([cpu_ticks(P) || {_, P} <- MPs]),
      sys => system_cpu()}.

read_ej(Ej, EjPid) ->
    Mem = rpc(Ej, erlang, memory, []),
    #{ej_rss => rss(proc_status(EjPid)),
      ej_mem => proplists:get_value(total, Mem),
      ej_mem_parts => maps:with(?MEM_PARTS, maps:from_list(Mem)),
      ej_cpu => cpu_ticks(EjPid)}.

ej_sessions(Ej) ->
    rpc(Ej, ejabberd_sm, connected_users_number, []).

mp_connections(MPs) ->
    lists:sum([case megaphone:stats(MP, 5000) of
                   {ok, #{connections := C}} -> C;
                   Other -> fail("megaphone:stats(~s): ~p", [MP, Other])
               end || {MP, _} <- MPs]).

%%====================================================================
%% Sessions
%%====================================================================

%% Starts one pool per client node for users From..To (contiguous shares, an
%% even number each so that pairs stay in one pool), waits until every
%% session logged in and saw its presence echo, and checks that ejabberd
%% counts them. Returns {Pools, LoginSeconds}.
login(Cfg = #{clients := Clients, ports := Ports, resource := Res, concurrency := W}, From, To) ->
    N = To - From + 1,
    Shares = shares(From, To, length(Clients)),
    T0 = os:system_time(microsecond),
    Pools = [begin
                 Users = [{I, user(I), password(I)} || I <- lists:seq(A, B)],
                 Partners = maps:from_list([{I, partner(I)} || I <- lists:seq(A, B)]),
                 Spec = #{port => Port, src_ip => Ip, users => Users, partners => Partners,
                          resource => Res, concurrency => W, body => maps:get(body, Cfg, 100),
                          tls => maps:get(tls, Cfg, none)},
                 rpc(C, megaphone_bench_load, start_pool, [Spec])
             end || {{A, B}, {C, Ip}, Port} <- lists:zip3(Shares, Clients, Ports), B >= A],
    %% 10 min, or 50 logins/s for big N.
    Deadline = deadline(max(?LOGIN_TIMEOUT, 20 * N)),
    Last = await_logins(Pools, N, Deadline, erlang:monotonic_time(millisecond)),
    Secs = max(1, Last - T0) / 1.0e6,
    #{ej := Ej} = Cfg,
    wait_until(fun() -> ej_sessions(Ej) =:= N end, 30000,
               io_lib:format("ejabberd to count ~b sessions (it counts ~b)", [N, ej_sessions(Ej)])),
    {Pools, Secs}.

await_logins(Pools, N, Deadline, LastProgress) ->
    Sts = [megaphone_bench_load:call(P, status, 30000) || P <- Pools],
    In = lists:sum([maps:get(logged_in, S) || S <- Sts]),
    Failed = lists:sum([maps:get(failed, S) + maps:get(down, S) || S <- Sts]),
    Failed =:= 0 orelse
        fail("~b sessions failed to log in or went down; first reasons: ~p",
             [Failed, lists:sublist(lists:append([maps:get(reasons, S) || S <- Sts]), 3)]),
    Now = erlang:monotonic_time(millisecond),
    case In of
        N ->
            lists:max([maps:get(last_login_us, S) || S <- Sts]);
        _ ->
            remaining(Deadline) > 0 orelse fail("only ~b of ~b sessions logged in in time", [In, N]),
            LP = case Now - LastProgress > 5000 of
                     true -> progress("  ~b of ~b logged in", [In, N]), Now;
                     false -> LastProgress
                 end,
            timer:sleep(20),
            await_logins(Pools, N, Deadline, LP)
    end.

%% Contiguous shares of From..To over K pools, each of even size where possible.
shares(From, To, K) ->
    Pairs = (To - From + 1) div 2,
    Odd = (To - From + 1) rem 2,
    Sizes0 = [2 * (Pairs div K + case I =< Pairs rem K of true -> 1; false -> 0 end)
              || I <- lists:seq(1, K)],
    Sizes = case Odd of
                1 -> [hd(Sizes0) + 1 | tl(Sizes0)];
                0 -> Sizes0
            end,
    {Out, _} = lists:mapfoldl(fun(S, A) -> {{A, A + S - 1}, A + S} end, From, Sizes),
    Out.

%% Users 2i-1 and 2i are a pair.
partner(I) when I rem 2 =:= 1 -> I + 1;
partner(I) -> I - 1.

%% What the pools' sessions negotiated: [{none | <<"Protocol Cipher">>, Count}].
negotiated(Pools) ->
    Counts = lists:foldl(
               fun(P, Acc) ->
                       #{negotiated := Ns} = megaphone_bench_load:call(P, status, 30000),
                       lists:foldl(fun({K, C}, A) -> maps:update_with(K, fun(X) -> X + C end, C, A) end,
                                   Acc, Ns)
               end, #{}, Pools),
    lists:sort(maps:to_list(Counts)).

close(#{ej := Ej}, Pools) ->
    [ok = megaphone_bench_load:call(P, close, 60000) || P <- Pools],
    wait_until(fun() -> ej_sessions(Ej) =:= 0 end, 120000, "ejabberd sessions = 0 after closing").

ping_all(Pools) ->
    Rs = [megaphone_bench_load:call(P, ping, 180000) || P <- Pools],
    #{ok => lists:sum([maps:get(ok, R) || R <- Rs]),
      failed => lists:sum([maps:get(failed, R) || R <- Rs]),
      reasons => lists:sublist(lists:append([maps:get(reasons, R) || R <- Rs]), 3)}.

%% A warm-up login of W sessions (first logins load code on both sides),
%% not measured.
warm_up(_Cfg, 0) ->
    ok;
warm_up(Cfg = #{resource := Res}, W) ->
    {Pools, _} = login(Cfg#{resource => <<Res/binary, "w">>}, 1, W),
    close(Cfg, Pools).

%%====================================================================
%% Memory and logins
%%====================================================================

do_mem_run(Cfg = #{ej := Ej, n := N}) ->
    wait_until(fun() -> ej_sessions(Ej) =:= 0 end, 120000, "ejabberd sessions = 0 before a run"),
    warm_up(Cfg, maps:get(warmup_logins, Cfg, 0)),
    R0 = baseline(Cfg),
    {Pools, Secs} = login(Cfg, 1, N),
    LoggedIn = deadline(maps:get(idle_secs, Cfg, 0) * 1000),
    R1 = read(Cfg),
    Negotiated = negotiated(Pools),
    {R2, Settle} = settle(Cfg, N),
    Idle = idle_phase(Cfg, N, Pools, R0, R2, LoggedIn),
    Ping = ping_all(Pools),
    maps:get(failed, Ping) =:= 0 orelse fail("~b sessions did not answer a ping: ~p",
                                             [maps:get(failed, Ping), maps:get(reasons, Ping)]),
    %% The full-sweep candidate: every process in ejabberd collected.
    G0 = read(Cfg),
    gc_all(Ej),
    R3 = read(Cfg),
    C2sGc = c2s_stats(Ej),
    close(Cfg, Pools),
    Hz = maps:get(clk_tck, Cfg),
    Res = (mem_figures(R0, R2, N))#{
            n => N, login_secs => Secs, logins_s => N / Secs, settle_secs => Settle,
            ej_mem_gc_b => (maps:get(ej_mem, R3) - maps:get(ej_mem, R0)) / N,
            ej_rss_gc_b => (maps:get(ej_rss, R3) - maps:get(ej_rss, R0)) * 1024 / N,
            mem_parts_b => mem_parts(R0, R2, N), mem_parts_gc_b => mem_parts(R0, R3, N),
            c2s_gc_b => maps:get(mem, C2sGc) / max(1, maps:get(n, C2sGc)),
            ej_us_gc => (maps:get(ej_cpu, R3) - maps:get(ej_cpu, G0)) / Hz * 1.0e6 / N,
            ej_us_login => (maps:get(ej_cpu, R1) - maps:get(ej_cpu, R0)) / Hz * 1.0e6 / N,
            mp_us_login => (maps:get(mp_cpu, R1) - maps:get(mp_cpu, R0)) / Hz * 1.0e6 / N,
            pinged => maps:get(ok, Ping), negotiated => Negotiated},
    progress("  ~b sessions: ~.1f logins/s, ejabberd ~.1f us/login; ejabberd RSS ~.1f B/session, "
             "erlang:memory ~.1f B/session (system ~.1f, processes ~.1f; after a full GC ~.1f), "
             "Swift RSS ~.1f B/conn, Slab ~.1f B/conn",
             [N, maps:get(logins_s, Res), maps:get(ej_us_login, Res), maps:get(ej_rss_b, Res),
              maps:get(ej_mem_b, Res), maps:get(system, maps:get(mem_parts_b, Res)),
              maps:get(processes, maps:get(mem_parts_b, Res)), maps:get(ej_mem_gc_b, Res),
              maps:get(mp_rss_b, Res), maps:get(slab_b, Res)]),
    maps:merge(Res, Idle).

%% Issue 13. The sessions idle until `idle_secs' after the last login, then,
%% without any forced GC: the c2s processes' memory per session (and how many
%% hibernate), erlang:memory() parts and beam RSS per session. Then the
%% wake-up cost: `probe_pairs' pairs one after the other, a message from a
%% session as the idle spell left it (hibernated) and one right after (awake);
%% a storm (every session sends its partner one message at once: all wake)
%% and a second one (all awake), ejabberd CPU of each; then `trickle_rate'
%% messages/s between random partners for `trickle_secs', counting the
%% node's idle notices (each one a hibernation, so a later wake-up).
idle_phase(Cfg = #{ej := Ej, mp := MPs, clk_tck := Hz}, N, Pools, R0, R2, LoggedIn) ->
    IdleSecs = maps:get(idle_secs, Cfg, 0),
    progress("  idling until ~b s after the last login", [IdleSecs]),
    timer:sleep(remaining(LoggedIn)),
    RI = read(Cfg),
    C2s = c2s_stats(Ej),
    Notices0 = idle_notices(MPs),
    D = fun(K, A, B) -> (maps:get(K, B) - maps:get(K, A)) end,
    Cpu = fun(A, B) -> D(ej_cpu, A, B) / Hz * 1.0e6 end,
    MpCpu = fun(A, B) -> D(mp_cpu, A, B) / Hz * 1.0e6 end,
    %% Wake-up latency: the first pool's first pairs, one after the other.
    Probe = megaphone_bench_load:call(hd(Pools), {probe, maps:get(probe_pairs, Cfg, 100),
                                                  [<<"P1">>, <<"P2">>, <<"P3">>]}, 300000),
    maps:get(failed, Probe, 0) =:= 0 orelse fail("~b wake-up probes got no answer", [maps:get(failed, Probe)]),
    C2sStorm = c2s_stats(Ej),
    {S1, RS0, RS1} = storm(Cfg, Pools, <<"S1">>),
    {S2, _, RS2} = storm(Cfg, Pools, <<"S2">>),
    Notices1 = idle_notices(MPs),
    {Trickle, RT0, RT1, NT0, NT1} =
        case maps:get(trickle_secs, Cfg, 0) of
            0 -> {0, RS2, RS2, Notices1, Notices1};
            TS ->
                progress("  trickle: ~b msgs/s for ~b s", [maps:get(trickle_rate, Cfg), TS]),
                T0 = read(Cfg),
                Nt0 = idle_notices(MPs),
                Sent = lists:sum([maps:get(sent, X) || X <- pcall(Pools, {trickle, maps:get(trickle_rate, Cfg) div length(Pools), TS}, (TS + 60) * 1000)]),
                Nt1 = idle_notices(MPs),
                {Sent, T0, read(Cfg), Nt0, Nt1}
        end,
    TrickleSecs = max(1, D(t, RT0, RT1)) / 1.0e6,
    Lats = fun(Tag) -> lists:sort(maps:get(Tag, Probe, [])) end,
    Hib = maps:get(hibernated, C2sStorm),
    ColdUs = Cpu(RS0, RS1),
    WarmUs = Cpu(RS1, RS2),
    Res = #{idle_secs => IdleSecs,
            idle_ej_rss_b => D(ej_rss, R0, RI) * 1024 / N,
            idle_mp_rss_b => D(mp_rss, R0, RI) * 1024 / N,
            idle_parts_b => mem_parts(R0, RI, N),
            idle_rss_ratio => D(ej_rss, R0, RI) * 1024 / max(1, D(ej_mem, R0, RI)),
            idle_c2s_b => maps:get(mem, C2s) / max(1, maps:get(n, C2s)),
            idle_c2s_n => maps:get(n, C2s), idle_hibernated => maps:get(hibernated, C2s),
            idle_ej_us => Cpu(R2, RI) / N, idle_notices => Notices0,
            probe_cold_p50 => pct(Lats(<<"P1">>), 50), probe_cold_p99 => pct(Lats(<<"P1">>), 99),
            probe_warm_p50 => pct(Lats(<<"P2">>), 50), probe_warm_p99 => pct(Lats(<<"P2">>), 99),
            probe_warm2_p50 => pct(Lats(<<"P3">>), 50),
            probe_n => length(Lats(<<"P1">>)),
            storm_hibernated => Hib,
            storm_cold_ej_us => ColdUs / N, storm_warm_ej_us => WarmUs / N,
            storm_cold_mp_us => MpCpu(RS0, RS1) / N, storm_warm_mp_us => MpCpu(RS1, RS2) / N,
            ej_us_wake => case Hib of 0 -> undefined; _ -> (ColdUs - WarmUs) / Hib end,
            storm_cold_p50 => pct(lists:sort(maps:get(lats, S1)), 50),
            storm_cold_p99 => pct(lists:sort(maps:get(lats, S1)), 99),
            storm_warm_p50 => pct(lists:sort(maps:get(lats, S2)), 50),
            storm_warm_p99 => pct(lists:sort(maps:get(lats, S2)), 99),
            storm_secs => {D(t, RS0, RS1) / 1.0e6, D(t, RS1, RS2) / 1.0e6},
            trickle_sent => Trickle, trickle_msgs_s => Trickle / TrickleSecs,
            trickle_notices_s => (NT1 - NT0) / TrickleSecs,
            trickle_ej_cpu => 100 * Cpu(RT0, RT1) / 1.0e6 / TrickleSecs,
            trickle_mp_cpu => 100 * MpCpu(RT0, RT1) / 1.0e6 / TrickleSecs,
            trickle_ej_us_msg => per(Cpu(RT0, RT1), Trickle)},
    progress("  after ~b s idle: c2s ~.1f B/session (~b of ~b hibernated), erlang:memory ~.1f B/session, "
             "beam RSS ~.1f B/session (x~.2f); wake-up probe p50 ~s / ~s us (cold / warm); storm ejabberd "
             "~.1f / ~.1f us/msg (cold / warm; ~b hibernated before); trickle ~.1f msgs/s, ~.1f idle notices/s, "
             "ejabberd ~.1f %",
             [IdleSecs, maps:get(idle_c2s_b, Res), maps:get(hibernated, C2s), maps:get(n, C2s),
              maps:get(total, maps:get(idle_parts_b, Res)), maps:get(idle_ej_rss_b, Res),
              maps:get(idle_rss_ratio, Res), fmt(maps:get(probe_cold_p50, Res)),
              fmt(maps:get(probe_warm_p50, Res)), maps:get(storm_cold_ej_us, Res),
              maps:get(storm_warm_ej_us, Res), Hib, maps:get(trickle_msgs_s, Res),
              maps:get(trickle_notices_s, Res), maps:get(trickle_ej_cpu, Res)]),
    Res.

%% One storm round: {Result, ReadingBefore, ReadingAfter}; every session must
%% get its partner's message.
storm(Cfg, Pools, Tag) ->
    RA = read(Cfg),
    Rs = pcall(Pools, {storm, Tag}, 180000),
    RB = read(Cfg),
    Failed = lists:sum([maps:get(failed, R) || R <- Rs]),
    Failed =:= 0 orelse fail("storm ~s: ~b sessions did not get their partner's message: ~p",
                             [Tag, Failed, lists:append([maps:get(reasons, R) || R <- Rs])]),
    {#{lats => lists:append([maps:get(lats, R) || R <- Rs])}, RA, RB}.

%% The same request to every pool at once; the replies in pool order.
pcall(Pools, Req, Timeout) ->
    Self = self(),
    Refs = [begin
                Ref = make_ref(),
                spawn_link(fun() -> Self ! {Ref, megaphone_bench_load:call(P, Req, Timeout)} end),
                Ref
            end || P <- Pools],
    [receive {Ref, R} -> R end || Ref <- Refs].

%% P-th percentile of a sorted list.
pct([], _) -> undefined;
pct(L, P) -> 1.0 * lists:nth(max(1, min(length(L), ceil(length(L) * P / 100))), L).

%% Counters of the Megaphone nodes' stats, summed over the nodes.
mp_counters(MPs) ->
    Keys = [chunks_delivered, reads_paused, request_reads_paused, nodes_behind],
    lists:foldl(fun({MP, _}, Acc) ->
                        case megaphone:stats(MP, 5000) of
                            {ok, St} -> maps:map(fun(K, V) -> V + maps:get(K, St, 0) end, Acc);
                            Other -> fail("megaphone:stats(~s): ~p", [MP, Other])
                        end
                end, maps:from_list([{K, 0} || K <- Keys]), MPs).

%% Idle notices sent so far, summed over the Megaphone nodes.
idle_notices(MPs) ->
    lists:sum([case megaphone:stats(MP, 5000) of
                   {ok, #{idle_notices := I}} -> I;
                   {ok, _} -> 0;
                   Other -> fail("megaphone:stats(~s): ~p", [MP, Other])
               end || {MP, _} <- MPs]).

%% The c2s processes in ejabberd (proc_lib initial call xmpp_stream_in:init/1
%% for ejabberd's own listener, megaphone_c2s:init/1 for Megaphone's):
%% #{n, mem (sum of process_info memory), hibernated (waiting in
%% erlang:hibernate/3)}. Evaluated inside ejabberd (erl_eval: nothing of ours
%% is loaded there); process_info wakes nobody.
c2s_stats(Ej) ->
    Src = "lists:foldl("
          "  fun(P, {N, M, H}) ->"
          "      case erlang:process_info(P, [dictionary, memory, current_function]) of"
          "          [{dictionary, D}, {memory, Mem}, {current_function, CF}] ->"
          "              case lists:keyfind('$initial_call', 1, D) of"
          "                  {_, {Mod, init, _}} when Mod =:= xmpp_stream_in; Mod =:= megaphone_c2s ->"
          "                      {N + 1, M + Mem, H + case CF of {erlang, hibernate, 3} -> 1; _ -> 0 end};"
          "                  _ -> {N, M, H}"
          "              end;"
          "          _ -> {N, M, H}"
          "      end"
          "  end, {0, 0, 0}, erlang:processes()).",
    case eval_on(Ej, Src, [], 120000) of
        {value, {N, M, H}, _} -> #{n => N, mem => M, hibernated => H};
        Other -> fail("c2s process memory: ~p", [Other])
    end.

%% After the logins: idle until ejabberd's erlang:memory(total) moves by less
%% than 100 B per session between two readings 1 s apart (at most 30 s): the
%% reading then, without any forced GC. {Settled, Seconds}.
settle(Cfg, N) ->
    T0 = erlang:monotonic_time(millisecond),
    Settled = settle_loop(Cfg, N, read(Cfg), deadline(30000)),
    {Settled, (erlang:monotonic_time(millisecond) - T0) / 1000}.

%% The reading before the logins, once ejabberd is quiet: every process
%% garbage-collected, and the number of processes and erlang:memory(total)
%% steady (< 10 processes, < 64 KB apart) over 1 s, at most 30 s. A freshly
%% started ejabberd keeps loading code for seconds after it reports started:
%% a dozen processes waiting in erl_prim_loader:request/1 with heaps of 0.5 to
%% 1.5 MB each (seen at 2,000 sessions: 2-7 MB in `processes', which then
%% vanish and came off the sessions' figures); and garbage from its start
%% would come off the after-GC figure.
baseline(Cfg) ->
    T0 = erlang:monotonic_time(millisecond),
    R = baseline_loop(Cfg, quiet_reading(Cfg), deadline(30000)),
    progress("  baseline after ~.1f s: ~b processes, erlang:memory(total) ~b B",
             [(erlang:monotonic_time(millisecond) - T0) / 1000, maps:get(ej_procs, R), maps:get(ej_mem, R)]),
    R.

baseline_loop(Cfg, Prev, Deadline) ->
    timer:sleep(1000),
    R = quiet_reading(Cfg),
    case (abs(maps:get(ej_procs, R) - maps:get(ej_procs, Prev)) < 10 andalso
          abs(maps:get(ej_mem, R) - maps:get(ej_mem, Prev)) < 65536) orelse remaining(Deadline) =:= 0 of
        true -> R;
        false -> baseline_loop(Cfg, R, Deadline)
    end.

quiet_reading(Cfg = #{ejs := Ejs}) ->
    [gc_all(E) || {E, _} <- Ejs],
    (read(Cfg))#{ej_procs => lists:sum([rpc(E, erlang, system_info, [process_count]) || {E, _} <- Ejs])}.

%% Garbage-collects every process in ejabberd.
gc_all(Ej) ->
    rpc(Ej, lists, foreach, [fun erlang:garbage_collect/1, rpc(Ej, erlang, processes, [])]).

settle_loop(Cfg, N, Prev, Deadline) ->
    timer:sleep(1000),
    R = read(Cfg),
    case abs(maps:get(ej_mem, R) - maps:get(ej_mem, Prev)) < 100 * N orelse remaining(Deadline) =:= 0 of
        true -> R;
        false -> settle_loop(Cfg, N, R, Deadline)
    end.

%% erlang:memory() parts, per session, between two readings.
mem_parts(#{ej_mem_parts := P0}, #{ej_mem_parts := P1}, N) ->
    maps:map(fun(K, V1) -> (V1 - maps:get(K, P0)) / N end, P1).

mem_figures(R0, R1, N) ->
    D = fun(K) -> maps:get(K, R1) - maps:get(K, R0) end,
    #{ej_rss_b => D(ej_rss) * 1024 / N, ej_mem_b => D(ej_mem) / N,
      mp_rss_b => D(mp_rss) * 1024 / N, slab_b => D(slab) * 1024 / N,
      ej_rss_kib => {maps:get(ej_rss, R0), maps:get(ej_rss, R1)},
      mp_rss_kib => {maps:get(mp_rss, R0), maps:get(mp_rss, R1)}}.

%%====================================================================
%% Messages
%%====================================================================

do_msg_run(Cfg = #{ej := Ej, pairs := P, inflight := K}) ->
    wait_until(fun() -> ej_sessions(Ej) =:= 0 end, 120000, "ejabberd sessions = 0 before a run"),
    {Pools, LoginSecs} = login(Cfg, 1, 2 * P),
    Negotiated = negotiated(Pools),
    Res = chat_measure(Cfg, Pools, fun() -> [ok = megaphone_bench_load:call(Pl, {chat, K}, 30000) || Pl <- Pools] end),
    close(Cfg, Pools),
    Res#{login_secs => LoginSecs, negotiated => Negotiated}.

%% One measured message run on logged-in sessions: Start() sets them
%% chatting (K in flight each way); after `warmup' seconds, `secs' seconds
%% are measured (and at least `min_msgs' messages); then every chatting
%% session sends END and checks what it received. Pools: those whose sessions
%% chat. ej_cpu_nodes: each ejabberd node's CPU % over the window.
chat_measure(Cfg = #{mp := MPs, secs := Secs, warmup := Warm, clk_tck := Hz}, Pools, Start) ->
    Start(),
    timer:sleep(Warm * 1000),
    [ok = megaphone_bench_load:call(Pl, {measure, true}, 30000) || Pl <- Pools],
    C0 = delivered(Pools),
    R0 = read(Cfg),
    N0 = idle_notices(MPs),
    M0 = mp_counters(MPs),
    timer:sleep(Secs * 1000),
    %% --smoke asks for a number of messages rather than a time.
    MinMsgs = maps:get(min_msgs, Cfg, 0),
    wait_until(fun() -> delivered(Pools) - C0 >= MinMsgs end, 60000,
               io_lib:format("~b messages delivered", [MinMsgs])),
    C1 = delivered(Pools),
    R1 = read(Cfg),
    N1 = idle_notices(MPs),
    M1 = mp_counters(MPs),
    [ok = megaphone_bench_load:call(Pl, {measure, false}, 30000) || Pl <- Pools],
    Stops = [megaphone_bench_load:call(Pl, chat_stop, 120000) || Pl <- Pools],
    Sum = fun(Key) -> lists:sum([maps:get(Key, S) || S <- Stops]) end,
    Hist = lists:foldl(fun(S, H) -> megaphone_bench_load:merge_hist(maps:get(hist, S), H) end,
                       #{}, Stops),
    Dt = (maps:get(t, R1) - maps:get(t, R0)) / 1.0e6,
    Msgs = C1 - C0,
    Cpu = fun(Key) -> (maps:get(Key, R1) - maps:get(Key, R0)) / Hz end,
    NodeCpu = fun(E) -> (maps:get(ej_cpu, maps:get(E, maps:get(per_ej, R1))) -
                         maps:get(ej_cpu, maps:get(E, maps:get(per_ej, R0)))) / Hz end,
    {B0, T0} = maps:get(sys, R0),
    {B1, T1} = maps:get(sys, R1),
    Res = #{msgs => Msgs, secs => Dt, msgs_s => Msgs / Dt,
            ej_cpu => 100 * Cpu(ej_cpu) / Dt, mp_cpu => 100 * Cpu(mp_cpu) / Dt,
            ej_cpu_nodes => maps:from_list([{E, 100 * NodeCpu(E) / Dt} || E <- maps:keys(maps:get(per_ej, R0))]),
            idle_notices_s => (N1 - N0) / Dt,
            %% The Megaphone nodes' side of the window (summed over the nodes):
            %% chunks of client bytes handed to ejabberd per message, times a
            %% reactor left clients unread (distribution queue full) or the
            %% distribution thread stopped taking requests, and the controller
            %% nodes marked behind at the end.
            mp_chunks_per_msg => per(maps:get(chunks_delivered, M1) - maps:get(chunks_delivered, M0), Msgs),
            mp_reads_paused => maps:get(reads_paused, M1) - maps:get(reads_paused, M0),
            mp_request_reads_paused => maps:get(request_reads_paused, M1) - maps:get(request_reads_paused, M0),
            mp_nodes_behind => maps:get(nodes_behind, M1),
            ej_us => per(Cpu(ej_cpu) * 1.0e6, Msgs), mp_us => per(Cpu(mp_cpu) * 1.0e6, Msgs),
            machine_busy => 100 * (B1 - B0) / max(1, T1 - T0),
            p50_us => megaphone_bench_load:percentile(Hist, 50),
            p99_us => megaphone_bench_load:percentile(Hist, 99),
            %% For bench/xmpp_plot.py's percentile chart, from the same histogram.
            p90_us => megaphone_bench_load:percentile(Hist, 90),
            max_us => megaphone_bench_load:percentile(Hist, 100),
            samples => lists:sum(maps:values(Hist)),
            received => Sum(received), sent => Sum(sent), seq_errors => Sum(seq_errors),
            error_stanzas => Sum(error_stanzas), unfinished => Sum(failed),
            reasons => lists:sublist(lists:append([maps:get(reasons, S) || S <- Stops]), 3)},
    progress("  ~.1f msgs/s, ejabberd ~.1f us/msg, Swift ~.1f us/msg, latency p50 ~s p99 ~s us; "
             "sent ~b received ~b, sequence errors ~b, error stanzas ~b, unfinished ~b",
             [maps:get(msgs_s, Res), maps:get(ej_us, Res), maps:get(mp_us, Res),
              fmt(maps:get(p50_us, Res)), fmt(maps:get(p99_us, Res)), maps:get(sent, Res),
              maps:get(received, Res), maps:get(seq_errors, Res), maps:get(error_stanzas, Res),
              maps:get(unfinished, Res)]),
    Res.

delivered(Pools) ->
    lists:sum([element(1, megaphone_bench_load:call(P, counters, 30000)) || P <- Pools]).

fmt(undefined) -> "-";
fmt(X) -> io_lib:format("~.1f", [X]).

%%====================================================================
%% Scale
%%====================================================================

do_scale_run(Cfg = #{ej := Ej, ejs := Ejs, mp := MPs, n := N, hold := Hold, clk_tck := Hz}) ->
    wait_until(fun() -> ej_sessions(Ej) =:= 0 end, 120000, "ejabberd sessions = 0 before a run"),
    warm_up(Cfg, maps:get(warmup_logins, Cfg, 0)),
    R0 = baseline(Cfg),
    {Pools, Secs} = login(Cfg, 1, N),
    R1 = read(Cfg),
    progress("  ~b sessions logged in and verified in ~.1f s; holding them ~b s", [N, Secs, Hold]),
    %% Where the sessions live and who announced them (the split is what
    %% `balance' made of the logins; a cluster of one has a single entry).
    Where = locate(Cfg),
    Split = controller_split(MPs),
    progress("  sessions per ejabberd node: ~p; per Megaphone node and ejabberd node: ~p",
             [maps:map(fun(_, Ixs) -> length(Ixs) end, Where), Split]),
    {R2, Settle} = settle(Cfg, N),
    [gc_all(E) || {E, _} <- Ejs],
    RGc = read(Cfg),
    %% --cluster: message runs between sessions on different ejabberd nodes
    %% and on the same one, while all N are logged in.
    Msg = case maps:get(msg_pairs, Cfg, 0) of
              0 -> #{};
              P -> cluster_msgs(Cfg, Pools, Where, P)
          end,
    Checks = hold(Cfg, Pools, deadline(Hold * 1000), 0),
    Ping = ping_all(Pools),
    Sessions = ej_sessions(Ej),
    Conns = mp_connections(MPs),
    Live = lists:sum([maps:get(live, megaphone_bench_load:call(P, status, 30000)) || P <- Pools]),
    R3 = read(Cfg),
    EndLocal = local_counts(Ejs),
    close(Cfg, Pools),
    Res = (mem_figures(R0, R2, N))#{
            per_node => node_figures(Cfg, Where, EndLocal, {R0, R1, R2, RGc, R3}),
            controller_split => Split, msg => Msg,
            n => N, login_secs => Secs, logins_s => N / Secs,
            ej_us_login => (maps:get(ej_cpu, R1) - maps:get(ej_cpu, R0)) / Hz * 1.0e6 / N,
            mp_us_login => (maps:get(mp_cpu, R1) - maps:get(mp_cpu, R0)) / Hz * 1.0e6 / N,
            settle_secs => Settle, ej_mem_gc_b => (maps:get(ej_mem, RGc) - maps:get(ej_mem, R0)) / N,
            checks => Checks, end_sessions => Sessions, end_connections => Conns,
            end_live => Live, pinged => maps:get(ok, Ping), ping_failed => maps:get(failed, Ping),
            ping_reasons => maps:get(reasons, Ping),
            end_ej_rss_b => (maps:get(ej_rss, R3) - maps:get(ej_rss, R0)) * 1024 / N,
            end_mp_rss_b => (maps:get(mp_rss, R3) - maps:get(mp_rss, R0)) * 1024 / N},
    (Sessions =:= N andalso Conns =:= N andalso Live =:= N andalso maps:get(failed, Ping) =:= 0)
        orelse fail("after holding: ejabberd counts ~b sessions, Megaphone ~b connections, "
                    "~b clients live, ~b of ~b answered a ping (~p); expected ~b each",
                    [Sessions, Conns, Live, maps:get(ok, Ping), N, maps:get(reasons, Ping), N]),
    Res.

%% Where each session of this run lives: #{EjNode => [Ix]} from each node's
%% own sessions (ejabberd_sm:dirty_get_my_sessions_list/0: node(Pid) is that
%% node). Every one of the run's sessions must be on exactly one node.
locate(#{ejs := Ejs, resource := Res, n := N}) ->
    Src = "[element(1, element(3, S)) || S <- ejabberd_sm:dirty_get_my_sessions_list(),"
          " element(3, element(3, S)) =:= Res].",
    Where = maps:from_list(
              [{E, case eval_on(E, Src, [{'Res', Res}], 120000) of
                       {value, Us, _} -> [binary_to_integer(I) || <<"xb", I/binary>> <- Us];
                       Other -> fail("the sessions of ~s: ~p", [E, Other])
                   end} || {E, _} <- Ejs]),
    All = lists:append(maps:values(Where)),
    (length(All) =:= N andalso length(lists:usort(All)) =:= N)
        orelse fail("the ejabberd nodes hold ~b sessions of this run (~b users); expected ~b",
                    [length(All), length(lists:usort(All)), N]),
    Where.

%% Local sessions of each ejabberd node: #{EjNode => Count}.
local_counts(Ejs) ->
    maps:from_list([{E, case eval_on(E, "length(ejabberd_sm:dirty_get_my_sessions_list()).", [], 60000) of
                            {value, C, _} -> C;
                            Other -> fail("the sessions of ~s: ~p", [E, Other])
                        end} || {E, _} <- Ejs]).

%% Each Megaphone node's open connections per controller node (stats
%% controller_nodes): #{MegaphoneNode => #{EjNode => Connections}}.
controller_split(MPs) ->
    maps:from_list([{MP, case megaphone:stats(MP, 5000) of
                             {ok, #{controller_nodes := CN}} ->
                                 maps:map(fun(_, #{connections := C}) -> C end, CN);
                             Other -> fail("megaphone:stats(~s): ~p", [MP, Other])
                         end} || {MP, _} <- MPs]).

%% Each ejabberd node's share: its sessions, memory per session of its own
%% (the settled reading R2 and after the full GC, less the baseline R0), beam
%% RSS at the end of the hold, CPU of the logins (R0 to R1).
node_figures(#{ejs := Ejs, clk_tck := Hz}, Where, EndLocal, {R0, R1, R2, RGc, R3}) ->
    maps:from_list(
      [begin
           S = length(maps:get(E, Where)),
           At = fun(R) -> maps:get(E, maps:get(per_ej, R)) end,
           D = fun(K, RA, RB) -> maps:get(K, At(RB)) - maps:get(K, At(RA)) end,
           Per = fun(X) -> X / max(1, S) end,
           LoginCpu = D(ej_cpu, R0, R1) / Hz,
           {E, #{sessions => S, end_sessions => maps:get(E, EndLocal),
                 rss_b => Per(D(ej_rss, R0, R2) * 1024),
                 mem_parts_b => maps:map(fun(K, V) -> Per(V - maps:get(K, maps:get(ej_mem_parts, At(R0)))) end,
                                         maps:get(ej_mem_parts, At(R2))),
                 mem_gc_b => Per(D(ej_mem, R0, RGc)),
                 end_rss_b => Per(D(ej_rss, R0, R3) * 1024),
                 rss_kib => {maps:get(ej_rss, At(R0)), maps:get(ej_rss, At(R2)), maps:get(ej_rss, At(R3))},
                 login_cpu_s => LoginCpu, us_login => Per(LoginCpu * 1.0e6)}}
       end || {E, _} <- Ejs]).

%% --cluster's message runs: `reps' times (interleaved: odd reps cross first,
%% even reps same first) `msg_pairs' pairs chatting, once with the two users
%% of each pair on different ejabberd nodes (cross) and once on the same
%% node (same; the pairs alternate between the nodes). Both users of a pair
%% are in one pool (one client node: latency is measured on one clock), and
%% every run has pairs of its own (a session's sequence numbers go on from
%% run to run). #{cross => [Res], same => [Res]} in rep order.
cluster_msgs(Cfg = #{clients := Clients, n := N, inflight := K, secs := Secs}, Pools, Where, P) ->
    Nodes = lists:sort(maps:keys(Where)),
    length(Nodes) >= 2 orelse fail("message runs across ejabberd nodes need 2 or more, not ~p", [Nodes]),
    NodeOf = maps:from_list([{Ix, E} || {E, Ixs} <- maps:to_list(Where), Ix <- Ixs]),
    Ranges = [R || R = {A, B} <- shares(1, N, length(Clients)), B >= A],
    Avail0 = [{Pool, maps:from_list([{E, [Ix || Ix <- lists:seq(A, B), maps:get(Ix, NodeOf) =:= E]}
                                      || E <- Nodes])}
              || {Pool, {A, B}} <- lists:zip(Pools, Ranges)],
    Order = [{Rep, Kind} || Rep <- lists:seq(1, maps:get(reps, Cfg, 1)),
                            Kind <- case Rep rem 2 of 1 -> [cross, same]; 0 -> [same, cross] end],
    {Out, _} = lists:foldl(
                 fun({Rep, Kind}, {Acc, Avail}) ->
                         {PoolPairs, Avail1} = take_pairs(Kind, P, Avail, Nodes),
                         progress("rep ~b: ~s: ~b pairs (~s ejabberd node) x ~b in flight, ~b s",
                                  [Rep, Kind, P, case Kind of cross -> "different"; same -> "one" end, K, Secs]),
                         R = chat_measure(Cfg, [Pl || {Pl, _} <- PoolPairs],
                                          fun() -> [ok = megaphone_bench_load:call(Pl, {chat_pairs, Prs, K}, 30000)
                                                    || {Pl, Prs} <- PoolPairs] end),
                         {maps:update_with(Kind, fun(L) -> L ++ [R] end, [R], Acc), Avail1}
                 end, {#{}, Avail0}, Order),
    Out.

%% P pairs of unused sessions, dealt to the pools in turn: {[{Pool, [{IxA,
%% IxB}]}] (pools with pairs only), the sessions left}. Cross: A on one node,
%% B on the next; same: both on one node; the node moves on with each round
%% over the pools.
take_pairs(Kind, P, Avail, Nodes) ->
    NP = length(Avail),
    K = length(Nodes),
    {Arr, Picked} =
        lists:foldl(
          fun(I, {Arr0, Acc}) ->
                  J = I rem NP + 1,
                  {Pool, Free} = element(J, Arr0),
                  X = (I div NP) rem K,
                  NA = lists:nth(X + 1, Nodes),
                  NB = case Kind of
                           cross -> lists:nth((X + 1) rem K + 1, Nodes);
                           same -> NA
                       end,
                  {A, Free1} = pop(NA, Free),
                  {B, Free2} = pop(NB, Free1),
                  {setelement(J, Arr0, {Pool, Free2}), [{Pool, {A, B}} | Acc]}
          end, {list_to_tuple(Avail), []}, lists:seq(0, P - 1)),
    PoolPairs = [{Pool, Prs} || {Pool, _} <- Avail,
                                Prs <- [[Pr || {Pl, Pr} <- lists:reverse(Picked), Pl =:= Pool]],
                                Prs =/= []],
    {PoolPairs, tuple_to_list(Arr)}.

pop(E, Free) ->
    case maps:get(E, Free) of
        [Ix | Rest] -> {Ix, Free#{E := Rest}};
        [] -> fail("too few sessions on ~s left for the message runs' pairs", [E])
    end.

%% Every 10 s until the deadline: ejabberd still counts N sessions, the
%% Megaphone nodes N connections, and no client session went down.
hold(Cfg = #{ej := Ej, mp := MPs, n := N}, Pools, Deadline, Checks) ->
    case remaining(Deadline) of
        0 ->
            Checks;
        Left ->
            timer:sleep(min(10000, Left)),
            S = ej_sessions(Ej),
            C = mp_connections(MPs),
            Down = lists:sum([maps:get(down, megaphone_bench_load:call(P, status, 30000)) || P <- Pools]),
            (S =:= N andalso C =:= N andalso Down =:= 0)
                orelse fail("while holding: ejabberd counts ~b sessions, Megaphone ~b connections, "
                            "~b client sessions down; expected ~b, ~b, 0", [S, C, Down, N, N]),
            progress("  holding: ~b sessions, ~b connections, 0 down (~b s left)",
                     [S, C, remaining(Deadline) div 1000]),
            hold(Cfg, Pools, Deadline, Checks + 1)
    end.

%% Evaluates the Erlang expressions in Src inside node Ej (which needs none of
%% this module's code) with Bindings; returns what rpc:call/5 returns.
eval_on(Ej, Src, Bindings, Timeout) ->
    {ok, Toks, _} = erl_scan:string(Src),
    {ok, Exprs} = erl_parse:parse_exprs(Toks),
    rpc:call(Ej, erl_eval, exprs, [Exprs, Bindings], Timeout).
