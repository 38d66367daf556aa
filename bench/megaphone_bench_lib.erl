%%% What the benches share. Used by the bench nodes (megaphone_bench for
%%% bench/run, megaphone_bench_tls for bench/run-tls, megaphone_bench_xmpp and
%%% megaphone_bench_load for bench/xmpp) and by the reference servers
%%% (megaphone_bench_ref, megaphone_bench_tls_ref): failing and reporting,
%%% reaching other nodes and a Swift node, waiting, measuring, reading /proc,
%%% and formatting the cells of a report. Each bench module keeps only what is
%%% its own; see bench/README.md.
-module(megaphone_bench_lib).

%% Running a bench node
-export([report_and_halt/1]).
-export([fail/2]).
-export([progress/2]).
%% Other nodes
-export([connect_node/2]).
-export([rpc/4]).
-export([stop_node/1]).
-export([ej_started/1]).
%% A Swift node
-export([mp_call/4]).
-export([mp_stats/1]).
-export([mp_connections/1]).
-export([mp_shutdown/1]).
-export([receive_connects/3]).
-export([reactors/1]).
-export([reactor_spread/2]).
%% Waiting
-export([deadline/1]).
-export([remaining/1]).
-export([expired/1]).
-export([wait_until/3]).
-export([flush_mailbox/0]).
%% Measuring
-export([interleave/2]).
-export([timed/1]).
-export([delta/2]).
-export([sum_counters/2]).
-export([per/2]).
%% /proc
-export([thread_ticks/1]).
-export([proc_status/1]).
-export([rss/1]).
-export([cpu_ticks/1]).
-export([all_proc_ticks/0]).
-export([other_cpu/5]).
-export([system_cpu/0]).
-export([slab_kb/0]).
%% Reference servers
-export([stop_owner/2]).
-export([node_memory/0]).
%% Report cells
-export([others/1]).
-export([thread_label/1]).
-export([range/2]).
-export([mean/1]).
-export([ratio/2]).
-export([int/1]).
-export([f0/1]).
-export([f1/1]).
-export([f2/1]).

%%====================================================================
%% Running a bench node
%%====================================================================

%% Prints the report Fun() returns and halts with status 0; or prints why it
%% failed and halts with 1.
-spec report_and_halt(fun(() -> iodata())) -> no_return().
report_and_halt(Fun) ->
    Status =
        try
            io:put_chars(Fun()),
            0
        catch
            throw:{bench_error, Msg} ->
                io:format(standard_error, "BENCH FAILED: ~s~n", [Msg]),
                1;
            Class:Reason:Stack ->
                io:format(standard_error, "BENCH FAILED: ~p:~p~n~p~n", [Class, Reason, Stack]),
                1
        end,
    halt(Status).

%% Fails the bench: report_and_halt/1 prints the message and exits with 1.
-spec fail(io:format(), [term()]) -> no_return().
fail(Fmt, Args) ->
    throw({bench_error, lists:flatten(io_lib:format(Fmt, Args))}).

%% A progress line on stderr (the report goes to stdout).
-spec progress(io:format(), [term()]) -> ok.
progress(Fmt, Args) ->
    io:format(standard_error, "[bench ~s] " ++ Fmt ++ "~n", [clock() | Args]).

clock() ->
    {_, {H, M, S}} = calendar:local_time(),
    io_lib:format("~2..0B:~2..0B:~2..0B", [H, M, S]).

%%====================================================================
%% Other nodes
%%====================================================================

%% Retries net_kernel:connect_node/1 every 100 ms until Timeout ms.
-spec connect_node(node(), timeout()) -> ok.
connect_node(Node, Timeout) ->
    Deadline = deadline(Timeout),
    connect_node_loop(Node, Deadline).

connect_node_loop(Node, Deadline) ->
    case net_kernel:connect_node(Node) of
        true ->
            ok;
        _ ->
            case expired(Deadline) of
                true -> fail("cannot connect to node ~s", [Node]);
                false -> timer:sleep(100), connect_node_loop(Node, Deadline)
            end
    end.

%% rpc:call/5 with a 60 s timeout; a badrpc fails the bench.
-spec rpc(node(), module(), atom(), [term()]) -> term().
rpc(Node, M, F, A) ->
    case rpc:call(Node, M, F, A, 60000) of
        {badrpc, Reason} -> fail("rpc ~s ~p:~p failed: ~p", [Node, M, F, Reason]);
        R -> R
    end.

%% Stops a node the bench is done with (init:stop/0) and waits for its
%% nodedown; the driver still stops it by PID if it lingers.
-spec stop_node(node()) -> ok.
stop_node(Node) ->
    erlang:monitor_node(Node, true),
    rpc:cast(Node, init, stop, []),
    receive
        {nodedown, Node} -> ok
    after 30000 ->
        progress("~s did not stop within 30 s", [Node])
    end.

%% True once the ejabberd application runs in node Ej.
-spec ej_started(node()) -> boolean().
ej_started(Ej) ->
    case rpc:call(Ej, application, which_applications, [], 5000) of
        Apps when is_list(Apps) -> lists:keymember(ejabberd, 1, Apps);
        _ -> false
    end.

%%====================================================================
%% A Swift node
%%====================================================================

%% One request and its reply (README, "The message vocabulary"): MakeMsg(Ref)
%% goes to {megaphone, MP}; the reply tagged ReplyTag and Ref comes back.
-spec mp_call(node(), fun((reference()) -> tuple()), atom(), timeout()) -> term().
mp_call(MP, MakeMsg, ReplyTag, Timeout) ->
    Ref = make_ref(),
    {megaphone, MP} ! MakeMsg(Ref),
    receive
        {ReplyTag, Ref, Reply} -> Reply;
        {megaphone_error, Ref, Reason} -> fail("megaphone answered ~p with error ~p", [ReplyTag, Reason])
    after Timeout ->
        fail("no ~p reply from ~s within ~b ms", [ReplyTag, MP, Timeout])
    end.

-spec mp_stats(node()) -> map().
mp_stats(MP) ->
    mp_call(MP, fun(Ref) -> {stats, self(), Ref} end, megaphone_stats, 10000).

-spec mp_connections(node()) -> non_neg_integer().
mp_connections(MP) ->
    #{connections := N} = mp_stats(MP),
    N.

%% Shuts the node down and returns its final stats; the node then exits.
-spec mp_shutdown(node()) -> map().
mp_shutdown(MP) ->
    mp_call(MP, fun(Ref) -> {shutdown, self(), Ref} end, megaphone_stopped, 30000).

%% The ConnIds of the next N megaphone_connect messages, which must come from
%% a listener of transport Transport; fewer if Timeout ms pass first.
-spec receive_connects(non_neg_integer(), timeout(), tcp | tls) -> [reference()].
receive_connects(N, Timeout, Transport) ->
    receive_connects(N, deadline(Timeout), Transport, []).

receive_connects(0, _Deadline, _Transport, Acc) ->
    lists:reverse(Acc);
receive_connects(N, Deadline, Transport, Acc) ->
    receive
        {megaphone_connect, _NodePid, ConnId, _Peer, _Local, Transport} ->
            receive_connects(N - 1, Deadline, Transport, [ConnId | Acc]);
        {megaphone_connect, _NodePid, _ConnId, _Peer, _Local, Other} ->
            fail("megaphone_connect with transport ~p on a ~p listener", [Other, Transport])
    after remaining(Deadline) ->
        lists:reverse(Acc)
    end.

%% How many reactor threads the Swift node with OS pid OsPid runs.
-spec reactors(string()) -> non_neg_integer().
reactors(OsPid) ->
    length([N || {N, _} <- thread_ticks(OsPid), lists:prefix("reactor-", N)]).

%% Connections per reactor, "N0 / N1 / ...", every one of Reactors reactors
%% shown. A ConnId is a reference of the node whose first ID word is the
%% index of the reactor that owns the connection (README, "The message
%% vocabulary").
-spec reactor_spread([reference()], non_neg_integer()) -> iolist().
reactor_spread(ConnIds, Reactors) ->
    Counts = lists:foldl(fun(Id, M) -> maps:update_with(reactor_of(Id), fun(V) -> V + 1 end, 1, M) end,
                         #{}, ConnIds),
    Max = lists:max([Reactors - 1 | maps:keys(Counts)]),
    lists:join(" / ", [integer_to_list(maps:get(I, Counts, 0)) || I <- lists:seq(0, Max)]).

reactor_of(ConnId) ->
    <<131, 90, _Words:16, 119, Len, _Node:Len/binary, _Creation:32, Reactor:32, _/binary>> =
        term_to_binary(ConnId, [{minor_version, 2}]),
    Reactor.

%%====================================================================
%% Waiting
%%====================================================================

-spec deadline(non_neg_integer()) -> integer().
deadline(Timeout) -> erlang:monotonic_time(millisecond) + Timeout.

-spec remaining(integer()) -> non_neg_integer().
remaining(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).

-spec expired(integer()) -> boolean().
expired(Deadline) -> remaining(Deadline) =:= 0.

%% Polls Pred every 20 ms until it is true; fails the bench after Timeout ms.
-spec wait_until(fun(() -> boolean()), non_neg_integer(), iodata()) -> ok.
wait_until(Pred, Timeout, What) ->
    wait_until_loop(Pred, deadline(Timeout), What).

wait_until_loop(Pred, Deadline, What) ->
    case Pred() of
        true -> ok;
        false ->
            case expired(Deadline) of
                true -> fail("timed out waiting for ~s", [What]);
                false -> timer:sleep(20), wait_until_loop(Pred, Deadline, What)
            end
    end.

-spec flush_mailbox() -> ok.
flush_mailbox() ->
    receive _ -> flush_mailbox() after 0 -> ok end.

%%====================================================================
%% Measuring
%%====================================================================

%% The order of one rep's runs: the two sides interleave, and which goes first
%% alternates (odd reps as given, even reps reversed).
-spec interleave(integer(), [atom()]) -> [atom()].
interleave(Rep, Kinds) when Rep rem 2 =:= 1 -> Kinds;
interleave(_Rep, Kinds) -> lists:reverse(Kinds).

%% {F(), Timestamp}. Every reading carries its own timestamp, taken right
%% after it, so that a slow read (a loaded machine) does not stretch the
%% window of another.
-spec timed(fun(() -> T)) -> {T, integer()}.
timed(F) ->
    V = F(),
    {V, erlang:monotonic_time(microsecond)}.

%% {ValueDelta, Seconds} between two timed/1 readings; values are numbers or
%% tuples of numbers.
-spec delta({T, integer()}, {T, integer()}) -> {T, float()}.
delta({V0, T0}, {V1, T1}) ->
    {sub(V1, V0), (T1 - T0) / 1.0e6}.

sub(A, B) when is_number(A) -> A - B;
sub(A, B) when is_tuple(A) -> list_to_tuple(lists:zipwith(fun sub/2, tuple_to_list(A), tuple_to_list(B))).

%% {Sum of counters 1, 3, 5 ..., Sum of counters 2, 4, 6 ...} over N pairs:
%% reader or user I owns the counters 2I-1 and 2I.
-spec sum_counters(counters:counters_ref(), non_neg_integer()) -> {integer(), integer()}.
sum_counters(Ctr, N) ->
    lists:foldl(fun(I, {A, B}) ->
                        {A + counters:get(Ctr, 2 * I - 1), B + counters:get(Ctr, 2 * I)}
                end, {0, 0}, lists:seq(1, N)).

%% X per N; 0.0 when N is 0.
-spec per(number(), number()) -> float().
per(_X, 0) -> 0.0;
per(X, N) -> X / N.

%%====================================================================
%% /proc
%%====================================================================

%% [{ThreadName, Ticks}] for every thread of a process.
-spec thread_ticks(string()) -> [{string(), non_neg_integer()}].
thread_ticks(OsPid) ->
    Dir = "/proc/" ++ OsPid ++ "/task/",
    {ok, Tids} = file:list_dir(Dir),
    lists:sort([{string:trim(binary_to_list(read_proc(Dir ++ Tid ++ "/comm"))),
                 cpu_ticks(OsPid ++ "/task/" ++ Tid)} || Tid <- Tids]).

read_proc(Path) ->
    case file:read_file(Path) of
        {ok, B} -> B;
        {error, Reason} -> fail("cannot read ~s: ~p", [Path, Reason])
    end.

%% VmRSS, VmHWM, RssAnon, Threads from /proc/PID/status (kB, count).
-spec proc_status(string()) -> #{atom() => integer()}.
proc_status(OsPid) ->
    B = read_proc("/proc/" ++ OsPid ++ "/status"),
    Lines = binary:split(B, <<"\n">>, [global]),
    maps:from_list(
      [{K, list_to_integer(hd(string:lexemes(binary_to_list(V), " \tkB")))}
       || L <- Lines,
          [K0, V] <- [binary:split(L, <<":">>)],
          K <- [binary_to_atom(K0)],
          lists:member(K, ['VmRSS', 'VmHWM', 'RssAnon', 'RssFile', 'Threads'])]).

%% VmRSS (kB) of a proc_status/1 reading.
-spec rss(#{atom() => integer()}) -> integer().
rss(Status) -> maps:get('VmRSS', Status).

%% utime + stime of a process (all threads), in clock ticks.
-spec cpu_ticks(string()) -> non_neg_integer().
cpu_ticks(OsPid) ->
    B = read_proc("/proc/" ++ OsPid ++ "/stat"),
    %% The command name is in parentheses and may hold spaces: split after it.
    [_, Rest] = string:split(binary_to_list(B), ")", trailing),
    Fields = string:lexemes(Rest, " "),
    %% Rest starts at field 3 (state); utime and stime are fields 14 and 15.
    list_to_integer(lists:nth(12, Fields)) + list_to_integer(lists:nth(13, Fields)).

%% #{OsPid => {Comm, Ticks}} for every process on the machine.
-spec all_proc_ticks() -> #{string() => {string(), non_neg_integer()}}.
all_proc_ticks() ->
    {ok, Names} = file:list_dir("/proc"),
    maps:from_list(
      [{Pid, {Comm, Ticks}}
       || Pid <- Names, lists:all(fun(Ch) -> Ch >= $0 andalso Ch =< $9 end, Pid),
          {ok, B} <- [file:read_file("/proc/" ++ Pid ++ "/stat")],
          {Comm, Ticks} <- [parse_stat(B)]]).

parse_stat(B) ->
    L = binary_to_list(B),
    [Head, Rest] = string:split(L, ")", trailing),
    [_, Comm] = string:split(Head, "("),
    Fields = string:lexemes(Rest, " "),
    {Comm, list_to_integer(lists:nth(12, Fields)) + list_to_integer(lists:nth(13, Fields))}.

%% {TotalPercent, [{Comm, Percent}]} of the processes other than Exclude,
%% biggest first (a process born during the window counts from zero).
-spec other_cpu(map(), map(), [string()], pos_integer(), float()) -> {float(), [{string(), float()}]}.
other_cpu(All0, All1, Exclude, Hz, Dt) ->
    Deltas = [{Comm, 100 * (T1 - element(2, maps:get(Pid, All0, {Comm, 0}))) / Hz / Dt}
              || {Pid, {Comm, T1}} <- maps:to_list(All1), not lists:member(Pid, Exclude)],
    Busy = lists:reverse(lists:keysort(2, [D || D = {_, P} <- Deltas, P > 0])),
    {lists:sum([P || {_, P} <- Busy]), Busy}.

%% {busy, total} jiffies over all CPUs from /proc/stat: busy is user, nice,
%% system, irq and softirq; total adds idle, iowait and steal (guest time is
%% already inside user).
-spec system_cpu() -> {non_neg_integer(), non_neg_integer()}.
system_cpu() ->
    B = read_proc("/proc/stat"),
    [Line | _] = binary:split(B, <<"\n">>),
    ["cpu" | Vals] = string:lexemes(binary_to_list(Line), " "),
    [User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal | _] = [list_to_integer(V) || V <- Vals],
    Busy = User + Nice + System + IRQ + SoftIRQ,
    {Busy, Busy + Idle + IOWait + Steal}.

%% Kernel slab memory (kB) from /proc/meminfo.
-spec slab_kb() -> non_neg_integer().
slab_kb() ->
    B = read_proc("/proc/meminfo"),
    {match, [V]} = re:run(B, "\nSlab:\\s+(\\d+) kB", [{capture, all_but_first, list}]),
    list_to_integer(V).

%%====================================================================
%% Reference servers
%%====================================================================

%% Stops the owner process registered under Key in persistent_term (it closes
%% its listener and sockets), killing it after Timeout ms.
-spec stop_owner(term(), timeout()) -> ok.
stop_owner(Key, Timeout) ->
    case persistent_term:get(Key, undefined) of
        undefined ->
            ok;
        {Pid, _} ->
            MRef = erlang:monitor(process, Pid),
            Pid ! stop,
            receive
                {'DOWN', MRef, _, _, _} -> ok
            after Timeout ->
                exit(Pid, kill)
            end,
            persistent_term:erase(Key),
            ok
    end.

%% erlang:memory/0 plus the process and port counts.
-spec node_memory() -> map().
node_memory() ->
    maps:merge(maps:from_list(erlang:memory()),
               #{process_count => erlang:system_info(process_count),
                 port_count => erlang:system_info(port_count)}).

%%====================================================================
%% Report cells
%%====================================================================

%% Other processes' CPU, from other_cpu/5: "12 (ksoftirqd/0 8, sshd 2)".
-spec others({number(), [{string(), number()}]}) -> iolist().
others({Total, Top}) ->
    [f0(Total) | [[" (", lists:join(", ", [[C, " ", f0(P)] || {C, P} <- lists:sublist(Top, 2), P >= 1]), ")"]
                  || Top =/= [], element(2, hd(Top)) >= 1]].

%% A Swift thread's name in a report: the main thread runs the distribution.
-spec thread_label(string()) -> string().
thread_label("megaphone") -> "dist";
thread_label(Name) -> Name.

%% "Lo-Hi" of Xs formatted with F, or one value when both look the same.
-spec range([number()], fun((number()) -> iodata())) -> iodata().
range([], _F) -> "-";
range(Xs, F) ->
    Lo = lists:min(Xs),
    Hi = lists:max(Xs),
    case F(Lo) =:= F(Hi) of
        true -> F(Lo);
        false -> [F(Lo), "-", F(Hi)]
    end.

-spec mean([number()]) -> float().
mean([]) -> 0.0;
mean(Xs) -> lists:sum(Xs) / length(Xs).

-spec ratio(number(), number()) -> iodata().
ratio(_A, B) when B == 0 -> "n/a";
ratio(A, B) -> f2(A / B).

-spec int(number()) -> string().
int(X) when is_integer(X) -> integer_to_list(X);
int(X) -> integer_to_list(round(X)).

-spec f0(number()) -> string().
f0(X) -> integer_to_list(round(X)).

-spec f1(number()) -> iodata().
f1(X) -> io_lib:format("~.1f", [float(X)]).

-spec f2(number()) -> iodata().
f2(X) -> io_lib:format("~.2f", [float(X)]).
