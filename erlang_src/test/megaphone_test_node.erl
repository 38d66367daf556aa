%%%----------------------------------------------------------------------
%%% File    : megaphone_test_node.erl
%%% Purpose : EUnit fixture: one real Megaphone node (the Swift binary)
%%%----------------------------------------------------------------------

%% @doc EUnit fixture that runs the real `megaphone' binary.
%%
%% Each `start/0,1' runs its own binary under a unique alive name and a
%% random cookie, so parallel runs and other Megaphone nodes on the host
%% never clash. A small process owns the port: it keeps the node's output
%% (printed when a test fails, see `with_output/2'), sees its exit status,
%% and kills the binary, by OS pid, if the process that started it dies.
%%
%% The binary is `$MEGAPHONE_BIN' if set, else `.build/debug/megaphone'
%% under the repository root (`$MEGAPHONE_ROOT', else found from this
%% module's source file, its beam, or the current directory).
%% Set `MEGAPHONE_TEST_ECHO=1' to copy the node's output to the console as
%% it comes.
-module(megaphone_test_node).

%% API.
-export([binary_path/0]).
-export([check_binary/0]).
-export([ensure_distributed/0]).
-export([start/0]).
-export([start/1]).
-export([stop/1]).
-export([output/1]).
-export([wait_exit/2]).
-export([with_output/2]).
-export([cleanup/1]).
-export([repo_root/0]).
-export([instance/3]).

%% Internal.
-export([init/3]).
-export([loop/1]).

-export_type([fixture/0]).

%% How long the binary may take to publish itself and accept us.
-define(START_TIMEOUT, 15000).
%% How long it may take to exit after SIGTERM, and then after SIGKILL.
-define(STOP_TIMEOUT, 5000).
-define(CALL_TIMEOUT, 5000).
%% Interval between two polls of something that has a deadline.
-define(POLL_INTERVAL, 20).

-type fixture() :: #{node := node(),
                     cookie := atom(),
                     pid := pid(),
                     os_pid := non_neg_integer()}.

%%====================================================================
%% API
%%====================================================================

%% @doc Where the tests look for the binary.
-spec binary_path() -> file:filename().
binary_path() ->
    case os:getenv("MEGAPHONE_BIN") of
        Path when is_list(Path), Path =/= "" ->
            filename:absname(Path);
        _ ->
            filename:join([repo_root(), ".build", "debug", "megaphone"])
    end.

%% @doc The binary's path; fails, saying how to fix it, if it is missing.
-spec check_binary() -> file:filename().
check_binary() ->
    Bin = binary_path(),
    case filelib:is_regular(Bin) of
        true ->
            Bin;
        false ->
            erlang:error({megaphone_binary_missing, Bin,
                          "build it (swift build) or set MEGAPHONE_BIN "
                          "to the megaphone executable"})
    end.

%% @doc Makes this VM a distributed node (short names) if it is not one. It
%% only ever starts epmd, never stops it: other nodes on the host use it.
-spec ensure_distributed() -> ok.
ensure_distributed() ->
    case node() of
        nonode@nohost ->
            _ = os:cmd("epmd -daemon"),
            Name = list_to_atom("megaphone_eunit_" ++ unique_suffix()),
            start_distribution(Name, deadline(?START_TIMEOUT));
        _ ->
            ok
    end.

%% @equiv start([])
-spec start() -> fixture().
start() ->
    start([]).

%% @doc Starts the binary with `ExtraArgs' after the name, cookie and log
%% level, and returns once the node accepts a distribution connection from
%% us. The caller should call `stop/1'; if it dies first, the binary is
%% killed anyway.
-spec start([string()]) -> fixture().
start(ExtraArgs) ->
    Bin = check_binary(),
    ok = ensure_distributed(),
    Alive = "megaphone_t" ++ unique_suffix(),
    Node = list_to_atom(Alive ++ "@" ++ host()),
    %% A per-node cookie: this VM's own cookie and its other connections stay
    %% as they are.
    Cookie = list_to_atom("megaphone_cookie_" ++ unique_suffix()),
    true = erlang:set_cookie(Node, Cookie),
    Args = ["--name", Alive, "--cookie", atom_to_list(Cookie),
            "--log-level", "debug" | ExtraArgs],
    {Pid, MRef} = spawn_monitor(?MODULE, init, [self(), Bin, Args]),
    OsPid = receive
                {Pid, os_pid, P} ->
                    erlang:demonitor(MRef, [flush]),
                    P;
                {'DOWN', MRef, process, Pid, Reason} ->
                    erlang:error({megaphone_port_failed, Bin, Reason})
            end,
    Fixture = #{node => Node, cookie => Cookie, pid => Pid, os_pid => OsPid},
    wait_reachable(Fixture, deadline(?START_TIMEOUT)),
    Fixture.

%% @doc Stops the binary (SIGTERM, then SIGKILL) unless it has exited, and
%% returns its exit status.
-spec stop(fixture()) -> {ok, integer()} | {error, term()}.
stop(#{pid := Pid}) ->
    case call(Pid, stop, 2 * ?STOP_TIMEOUT + ?CALL_TIMEOUT) of
        {ok, {{exited, Status}, _Lines}} -> {ok, Status};
        {ok, {running, _Lines}} -> {error, still_running};
        {error, _} = Error -> Error
    end.

%% @doc The node's output so far, one binary per line.
-spec output(fixture()) -> [binary()].
output(#{pid := Pid}) ->
    case call(Pid, output, ?CALL_TIMEOUT) of
        {ok, Lines} -> Lines;
        {error, Reason} -> [iolist_to_binary(io_lib:format("(no output: ~p)", [Reason]))]
    end.

%% @doc Waits until the binary has exited and returns its exit status.
-spec wait_exit(fixture(), timeout()) -> {ok, integer()} | {error, term()}.
wait_exit(#{pid := Pid}, Timeout) ->
    call(Pid, wait_exit, Timeout).

%% @doc Runs `Fun'; if it raises, prints the node's output, then re-raises.
-spec with_output(fixture(), fun(() -> Result)) -> Result.
with_output(Fixture = #{node := Node}, Fun) ->
    try
        Fun()
    catch
        Class:Reason:Stack ->
            io:format(user, "~n--- output of ~s ---~n~s--- end of output of ~s ---~n",
                      [Node, [[Line, $\n] || Line <- output(Fixture)], Node]),
            erlang:raise(Class, Reason, Stack)
    end.

%% @doc The `foreach' cleanup of a fixture: stops the node.
-spec cleanup(fixture()) -> ok.
cleanup(Fixture) ->
    _ = stop(Fixture),
    ok.

%% @doc A `foreach' instantiator: `Test(Fixture)' as an EUnit test titled
%% `Title' with `Timeout' seconds, printing the node's output if it fails.
-spec instance(string(), fun((fixture()) -> term()), pos_integer()) ->
          fun((fixture()) -> {string(), {timeout, pos_integer(), fun(() -> term())}}).
instance(Title, Test, Timeout) ->
    fun(Fixture) ->
            {Title, {timeout, Timeout, fun() -> with_output(Fixture, fun() -> Test(Fixture) end) end}}
    end.

%%====================================================================
%% The process that owns the port
%%====================================================================

-spec init(pid(), file:filename(), [string()]) -> ok.
init(Parent, Bin, Args) ->
    MRef = erlang:monitor(process, Parent),
    Port = open_port({spawn_executable, Bin},
                     [{args, Args}, exit_status, stderr_to_stdout, binary,
                      {line, 4096}]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    Parent ! {self(), os_pid, OsPid},
    loop(#{parent => MRef,
           port => Port,
           os_pid => OsPid,
           status => running,
           lines => [],
           partial => <<>>,
           waiters => [],
           echo => os:getenv("MEGAPHONE_TEST_ECHO", "") =/= ""}).

-spec loop(map()) -> ok.
loop(State = #{parent := MRef, status := Status, waiters := Waiters}) ->
    receive
        {'DOWN', MRef, process, _, _} ->
            %% Whoever started the node is gone without stopping it.
            _ = terminate(State),
            ok;
        {call, From, Tag, stop} ->
            Final = terminate(State),
            From ! {Tag, {ok, {maps:get(status, Final), lines(Final)}}},
            ok;
        {call, From, Tag, status} ->
            From ! {Tag, {ok, Status}},
            ?MODULE:loop(State);
        {call, From, Tag, output} ->
            From ! {Tag, {ok, lines(State)}},
            ?MODULE:loop(State);
        {call, From, Tag, wait_exit} ->
            case Status of
                {exited, Code} ->
                    From ! {Tag, {ok, Code}},
                    ?MODULE:loop(State);
                running ->
                    ?MODULE:loop(State#{waiters := [{From, Tag} | Waiters]})
            end;
        Msg ->
            ?MODULE:loop(handle_port(Msg, State))
    end.

%%====================================================================
%% Internal functions
%%====================================================================

-spec handle_port(term(), map()) -> map().
handle_port({Port, {data, {noeol, Part}}}, State = #{port := Port, partial := Partial}) ->
    State#{partial := <<Partial/binary, Part/binary>>};
handle_port({Port, {data, {eol, Part}}},
            State = #{port := Port, partial := Partial, lines := Lines, echo := Echo}) ->
    Line = <<Partial/binary, Part/binary>>,
    Echo andalso io:format(user, "[megaphone] ~s~n", [Line]),
    State#{partial := <<>>, lines := [Line | Lines]};
handle_port({Port, {exit_status, Code}}, State = #{port := Port, waiters := Waiters}) ->
    _ = [From ! {Tag, {ok, Code}} || {From, Tag} <- Waiters],
    State#{status := {exited, Code}, waiters := []};
handle_port(_Other, State) ->
    State.

%% SIGTERM, then SIGKILL. Only while the port has not reported the exit:
%% after that the OS pid may belong to someone else.
-spec terminate(map()) -> map().
terminate(State = #{status := {exited, _}}) ->
    State;
terminate(State = #{os_pid := OsPid}) ->
    _ = os:cmd("kill " ++ integer_to_list(OsPid)),
    case await_exit(State, deadline(?STOP_TIMEOUT)) of
        Stopped = #{status := {exited, _}} ->
            Stopped;
        Running ->
            _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
            await_exit(Running, deadline(?STOP_TIMEOUT))
    end.

-spec await_exit(map(), integer()) -> map().
await_exit(State = #{status := {exited, _}}, _Deadline) ->
    State;
await_exit(State = #{port := Port}, Deadline) ->
    receive
        {Port, _} = Msg ->
            await_exit(handle_port(Msg, State), Deadline)
    after remaining(Deadline) ->
            State
    end.

-spec lines(map()) -> [binary()].
lines(#{lines := Lines, partial := <<>>}) ->
    lists:reverse(Lines);
lines(#{lines := Lines, partial := Partial}) ->
    lists:reverse([Partial | Lines]).

-spec call(pid(), atom(), timeout()) -> {ok, term()} | {error, term()}.
call(Pid, Request, Timeout) ->
    MRef = erlang:monitor(process, Pid),
    Pid ! {call, self(), MRef, Request},
    receive
        {MRef, Reply} ->
            erlang:demonitor(MRef, [flush]),
            Reply;
        {'DOWN', MRef, process, Pid, Reason} ->
            {error, {fixture_down, Reason}}
    after Timeout ->
            erlang:demonitor(MRef, [flush]),
            {error, timeout}
    end.

%% Polls until the node accepts our connection. A node that fails to start
%% usually exits: then fail at once, with its output.
-spec wait_reachable(fixture(), integer()) -> ok.
wait_reachable(Fixture = #{node := Node, pid := Pid}, Deadline) ->
    case net_kernel:connect_node(Node) of
        true ->
            ok;
        _ ->
            {ok, Exited} = call(Pid, status, ?CALL_TIMEOUT),
            Late = remaining(Deadline) =:= 0,
            case {Exited, Late} of
                {running, false} ->
                    sleep(?POLL_INTERVAL),
                    wait_reachable(Fixture, Deadline);
                _ ->
                    Lines = output(Fixture),
                    _ = stop(Fixture),
                    erlang:error({megaphone_unreachable, Node, Exited,
                                  {output, Lines}})
            end
    end.

-spec start_distribution(node(), integer()) -> ok.
start_distribution(Name, Deadline) ->
    case net_kernel:start([Name, shortnames]) of
        {ok, _} ->
            ok;
        {error, {already_started, _}} ->
            ok;
        {error, Reason} ->
            %% epmd -daemon returns before epmd listens.
            case remaining(Deadline) of
                0 ->
                    erlang:error({cannot_start_distribution, Reason});
                _ ->
                    sleep(?POLL_INTERVAL),
                    start_distribution(Name, Deadline)
            end
    end.

%% The C node takes the host part that `erl -sname' uses here (see
%% research/ei-swift.md); node names are short names.
-spec host() -> string().
host() ->
    [_, Host] = string:split(atom_to_list(node()), "@"),
    Host.

-spec unique_suffix() -> string().
unique_suffix() ->
    lists:concat([os:getpid(), "_", erlang:unique_integer([positive]), "_",
                  rand:uniform(1 bsl 30)]).

-spec repo_root() -> file:filename().
repo_root() ->
    case os:getenv("MEGAPHONE_ROOT") of
        Root when is_list(Root), Root =/= "" ->
            filename:absname(Root);
        _ ->
            Source = proplists:get_value(source, ?MODULE:module_info(compile), ""),
            {ok, Cwd} = file:get_cwd(),
            Starts = [filename:dirname(Source),
                      filename:dirname(code:which(?MODULE)),
                      Cwd],
            find_root([filename:absname(Dir) || Dir <- Starts], Starts)
    end.

%% The first directory, walking up from each start, that holds the project:
%% rebar.config beside erlang_src/megaphone.erl, and not rebar3's copy of it
%% under _build/.
-spec find_root([file:filename()], [file:filename()]) -> file:filename().
find_root([], Starts) ->
    erlang:error({megaphone_repo_root_not_found, Starts,
                  "set MEGAPHONE_ROOT or MEGAPHONE_BIN"});
find_root([Dir | Rest], Starts) ->
    IsRoot = filelib:is_regular(filename:join(Dir, "rebar.config"))
        andalso filelib:is_regular(filename:join([Dir, "erlang_src", "megaphone.erl"]))
        andalso not lists:member("_build", filename:split(Dir)),
    Parent = filename:dirname(Dir),
    if
        IsRoot -> Dir;
        Parent =:= Dir -> find_root(Rest, Starts);
        true -> find_root([Parent | Rest], Starts)
    end.

-spec deadline(non_neg_integer()) -> integer().
deadline(Timeout) ->
    erlang:monotonic_time(millisecond) + Timeout.

-spec remaining(integer()) -> non_neg_integer().
remaining(Deadline) ->
    max(0, Deadline - erlang:monotonic_time(millisecond)).

-spec sleep(non_neg_integer()) -> ok.
sleep(Ms) ->
    receive
    after Ms -> ok
    end.
