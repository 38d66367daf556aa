%%%----------------------------------------------------------------------
%%% File    : megaphone_xml_diff_tests.erl
%%% Purpose : Differential test: the Swift XML parser against fxml_stream
%%%----------------------------------------------------------------------

%% @doc The Swift stream parser (`megaphone-xml-events') must give the
%% events ejabberd's `fxml_stream' (fast_xml 1.1.49, the NIF ejabberd
%% 23.01 uses) gives for the same bytes. The rules fxml follows are written
%% down in Tests/corpus/xmpp-streams/FXML_RULES.md.
%%
%% Inputs: every `*.xml' under Tests/corpus/xmpp-streams/ (recursively, so
%% new corpus directories join by themselves), plus `?GENERATED' streams
%% from `megaphone_xml_gen', seeded: the seed is printed, and
%% `MEGAPHONE_XML_SEED=N' repeats a run. Generated files are written to
%% _build/test/megaphone_xml_gen/ and left there to look at.
%%
%% The Swift tool runs once per batch of files and parses each whole (it
%% checks its own split-independence and exits 3 if that fails). fxml
%% parses each file split in two at every byte (0..N; files over
%% `?ALL_SPLITS_UP_TO' bytes get that many split points spread evenly) and
%% fed byte by byte. fxml's messages are normalised: consecutive
%% `xmlstreamcdata' merged (expat splits them at line ends, references and
%% chunk ends), everything after the first `xmlstreamerror' dropped (fxml
%% sends another one for each later chunk).
%%
%% Equal means identical lists, except that
%%   (a) two lists that both end in an error, after identical events, are
%%       equal whatever the reasons; different reasons are printed as a note;
%%   (b) a Swift list that ends in `{xmlstreamerror, {restricted_xml, _}}'
%%       (a comment, PI, DTD or entity XMPP forbids, which fxml ignores or
%%       fails on differently) only needs fxml's events to start with the
%%       Swift events before that error (the last of them, if stream
%%       character data, may be a prefix of fxml's merged one).
%%
%% The stanza size limit is tested apart (`max_size_test_/0'): fxml counts
%% the bytes handed to `parse/2' since its last event, so its limit depends
%% on the chunking. The chosen reference is fxml fed ONE BYTE AT A TIME
%% with `MaxSize = ?MAX_SIZE', which is a chunking-independent rule: an
%% event must complete within `?MAX_SIZE - 1' bytes after the previous
%% event, else `<<"XML stanza is too big">>' when the `?MAX_SIZE'th byte
%% arrives. The Swift tool gets `--max-stanza-size ?MAX_SIZE'.
%%
%% The Swift tool is `$MEGAPHONE_XML_EVENTS' if set, else
%% `megaphone-xml-events' beside `$MEGAPHONE_BIN' if that exists, else in
%% `swift build --show-bin-path' run at the repository root. Without fxml
%% (Debian: erlang-p1-xml, pulled in by ejabberd) the tests are skipped,
%% saying so; without the Swift tool they fail.
-module(megaphone_xml_diff_tests).

-include_lib("eunit/include/eunit.hrl").

-define(GENERATED, 300).
-define(ALL_SPLITS_UP_TO, 8192).
-define(MAX_SIZE, 256).
%% The size-limit group runs the corpus and only this many of the generated
%% streams: it costs a second full run of the tool.
-define(MAX_SIZE_GENERATED, 100).
%% Files per run of the Swift tool.
-define(BATCH, 32).
%% Per run of the tool, whether over a batch or (after a failed batch) one
%% file.
-define(TOOL_TIMEOUT, 30000).
%% Per file: every split of a few KB through fxml takes well under this.
-define(FILE_TIMEOUT, 60).

%%====================================================================
%% Tests
%%====================================================================

xml_diff_test_() ->
    with_fxml(
      fun() ->
              {setup, fun() -> setup([], ?GENERATED) end, fun cleanup/1,
               fun(Cases) -> [file_test(Case, fun check_splits/1) || Case <- Cases] end}
      end).

max_size_test_() ->
    with_fxml(
      fun() ->
              {setup, fun() -> setup(["--max-stanza-size", integer_to_list(?MAX_SIZE)],
                                     ?MAX_SIZE_GENERATED) end,
               fun cleanup/1,
               fun(Cases) -> [file_test(Case, fun check_max_size/1) || Case <- Cases] end}
      end).

%% The harness's own rules, without fxml or the Swift tool.
compare_rules_test_() ->
    Start = {xmlstreamstart, <<"s">>, []},
    El = {xmlstreamelement, {xmlel, <<"a">>, [], []}},
    Restricted = {xmlstreamerror, {restricted_xml, <<"comment">>}},
    [{"fxml's stream cdata is merged, and nothing after its first error kept",
      ?_assertEqual([Start, {xmlstreamcdata, <<"ab">>}, {xmlstreamerror, {4, <<"x">>}}],
                    normalise([Start, {xmlstreamcdata, <<"a">>}, {xmlstreamcdata, <<"b">>},
                               {xmlstreamerror, {4, <<"x">>}}, El, {xmlstreamerror, {36, <<"y">>}}]))},
     {"identical lists are equal",
      ?_assertEqual({ok, []}, compare([Start, El], [Start, El]))},
     {"an extra event is a difference, at its index",
      ?_assertEqual({differ, 2, 'end of events', El}, compare([Start], [Start, El]))},
     {"errors with different reasons are equal, with a note",
      ?_assertEqual({ok, {error_reason, {7, <<"a">>}, {4, <<"b">>}}},
                    compare([Start, {xmlstreamerror, {7, <<"a">>}}],
                            [Start, {xmlstreamerror, {4, <<"b">>}}]))},
     {"an error on one side only is a difference",
      ?_assertMatch({differ, 2, _, _}, compare([Start, {xmlstreamerror, {4, <<"b">>}}], [Start, El]))},
     {"restricted_xml: fxml may go on after the Swift events",
      ?_assertEqual({ok, []}, compare([Start, Restricted], [Start, El, El]))},
     {"restricted_xml: fxml's merged stream cdata may extend the last Swift one",
      ?_assertEqual({ok, []}, compare([Start, {xmlstreamcdata, <<"a">>}, Restricted],
                                      [Start, {xmlstreamcdata, <<"ab">>}]))},
     {"restricted_xml: events before it must still match",
      ?_assertMatch({differ, 1, _, _}, compare([El, Restricted], [Start, El]))}].

with_fxml(Tests) ->
    case fxml_available() of
        ok ->
            Tests();
        {error, Why} ->
            Msg = io_lib:format("SKIPPED: fxml_stream is not usable here (~p); install "
                                "ejabberd or erlang-p1-xml to run the XML differential test", [Why]),
            {lists:flatten(Msg), fun() -> io:format(user, "~n~s~n", [Msg]) end}
    end.

file_test(#{name := Name} = Case, Check) ->
    {Name, {timeout, ?FILE_TIMEOUT, fun() -> Check(Case) end}}.

%%====================================================================
%% Set-up: inputs and the Swift tool's events
%%====================================================================

%% Cases: #{name, path, origin, swift := {ok, Events} | {error, Text}}.
setup(ToolArgs, GeneratedCount) ->
    Tool = swift_tool(),
    Seed = seed(),
    Corpus = corpus_files(),
    Generated = lists:sublist(write_generated(Seed), GeneratedCount),
    io:format(user, "~nmegaphone_xml_diff_tests: ~b corpus files, ~b generated with seed ~b "
              "(MEGAPHONE_XML_SEED=~b to repeat), tool ~s ~s~n",
              [length(Corpus), length(Generated), Seed, Seed, Tool, string:join(ToolArgs, " ")]),
    Inputs = [{rel(Path), Path, corpus} || Path <- Corpus]
        ++ [{rel(Path), Path, {generated, Seed, Label}} || {Label, Path} <- Generated],
    Results = run_tool(Tool, ToolArgs, [Path || {_, Path, _} <- Inputs]),
    [#{name => Name, path => Path, origin => Origin, swift => maps:get(Path, Results)}
     || {Name, Path, Origin} <- Inputs].

cleanup(_Cases) ->
    ok.

fxml_available() ->
    try
        {module, fxml_stream} = code:ensure_loaded(fxml_stream),
        State = fxml_stream:new(self(), infinity),
        true = fxml_stream:close(State),
        ok
    catch
        Class:Reason -> {error, {Class, Reason}}
    end.

%% One seed per VM, so that both test groups see the same streams.
seed() ->
    case persistent_term:get({?MODULE, seed}, undefined) of
        undefined ->
            Seed = case os:getenv("MEGAPHONE_XML_SEED") of
                       S when is_list(S), S =/= "" -> list_to_integer(S);
                       _ -> erlang:system_time(microsecond) rem 1000000007
                   end,
            persistent_term:put({?MODULE, seed}, Seed),
            Seed;
        Seed ->
            Seed
    end.

corpus_files() ->
    Dir = filename:join([repo_root(), "Tests", "corpus", "xmpp-streams"]),
    lists:sort(filelib:fold_files(Dir, "\\.xml$", true, fun(F, Acc) -> [F | Acc] end, [])).

write_generated(Seed) ->
    Dir = filename:join([repo_root(), "_build", "test", "megaphone_xml_gen"]),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    [ok = file:delete(F) || F <- filelib:wildcard(filename:join(Dir, "*.xml"))],
    Streams = megaphone_xml_gen:streams(Seed, ?GENERATED),
    [begin
         Base = io_lib:format("gen-~3..0b-~s.xml", [I, binary:replace(Label, <<":">>, <<"-">>)]),
         Path = filename:join(Dir, lists:flatten(Base)),
         ok = file:write_file(Path, Bytes),
         {Label, Path}
     end
     || {I, {Label, Bytes}} <- lists:zip(lists:seq(1, length(Streams)), Streams)].

rel(Path) ->
    Root = repo_root() ++ "/",
    case lists:prefix(Root, Path) of
        true -> lists:nthtail(length(Root), Path);
        false -> Path
    end.

%%====================================================================
%% The Swift tool
%%====================================================================

swift_tool() ->
    Tool = case os:getenv("MEGAPHONE_XML_EVENTS") of
               T when is_list(T), T =/= "" -> filename:absname(T);
               _ -> beside_node_binary(os:getenv("MEGAPHONE_BIN"))
           end,
    case filelib:is_regular(Tool) of
        true -> Tool;
        false -> erlang:error({megaphone_xml_events_missing, Tool,
                               "build it (swift build) or set MEGAPHONE_XML_EVENTS"})
    end.

beside_node_binary(Bin) when is_list(Bin), Bin =/= "" ->
    Tool = filename:join(filename:dirname(filename:absname(Bin)), "megaphone-xml-events"),
    case filelib:is_regular(Tool) of
        true -> Tool;
        false -> beside_node_binary(false)
    end;
beside_node_binary(_) ->
    Root = repo_root(),
    Swift = case os:find_executable("swift") of
                false -> os:find_executable("swift", "/opt/swift/usr/bin");
                S -> S
            end,
    BinDir = case Swift of
                 false ->
                     filename:join([Root, ".build", "debug"]);
                 _ ->
                     Out = os:cmd("cd '" ++ Root ++ "' && '" ++ Swift ++ "' build --show-bin-path 2>/dev/null"),
                     case string:trim(Out) of
                         "/" ++ _ = Dir -> Dir;
                         _ -> filename:join([Root, ".build", "debug"])
                     end
             end,
    filename:join(BinDir, "megaphone-xml-events").

%% Path => {ok, Events} | {error, Text}. A batch whose run fails is run
%% again file by file, so that the failure lands on the file that caused it.
%% Two batches run at once: the tool's own every-split check is the bulk
%% of this module's run time, and the machines it runs on have two cores.
run_tool(Tool, Args, Paths) ->
    Batches = chunks(Paths, ?BATCH),
    Lanes = [[B || {I, B} <- lists:zip(lists:seq(1, length(Batches)), Batches), I rem 2 =:= Lane]
             || Lane <- [0, 1]],
    Workers = [spawn_monitor(fun() ->
                                     exit({batches, [run_batch(Tool, Args, B) || B <- Lane]})
                             end)
               || Lane <- Lanes],
    maps:from_list(lists:append([receive
                                     {'DOWN', Ref, process, Pid, {batches, Results}} ->
                                         lists:append(Results);
                                     {'DOWN', Ref, process, Pid, Other} ->
                                         erlang:error({megaphone_xml_events_runner, Other})
                                 end
                                 || {Pid, Ref} <- Workers])).

run_batch(Tool, Args, [_ | _] = Paths) ->
    case run_tool_once(Tool, Args, Paths) of
        {ok, Records} when length(Records) =:= length(Paths) ->
            lists:zip(Paths, [decode_record(R) || R <- Records]);
        _ when length(Paths) > 1 ->
            lists:append([run_batch(Tool, Args, [P]) || P <- Paths]);
        {ok, Records} ->
            [{hd(Paths), {error, io_lib:format("the tool wrote ~b records for 1 file",
                                               [length(Records)])}}];
        {error, Text} ->
            [{hd(Paths), {error, Text}}]
    end.

decode_record(Bin) ->
    try binary_to_term(Bin) of
        Events when is_list(Events) -> {ok, Events};
        Other -> {error, io_lib:format("the tool's record is not a list: ~tp", [Other])}
    catch
        error:badarg -> {error, "the tool's record is not in the external term format"}
    end.

%% Runs the tool with stdout (the records) and stderr (its complaints)
%% kept apart: a port has only one pipe, so stderr goes to a file.
run_tool_once(Tool, Args, Paths) ->
    ErrFile = filename:join([repo_root(), "_build", "test",
                             lists:concat(["megaphone-xml-events.", os:getpid(), ".",
                                           erlang:unique_integer([positive]), ".stderr"])]),
    ok = filelib:ensure_dir(ErrFile),
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", "exec \"$0\" \"$@\" 2>\"$MEGAPHONE_XML_STDERR\"", Tool | Args ++ Paths]},
                      {env, [{"MEGAPHONE_XML_STDERR", ErrFile}]},
                      binary, exit_status, use_stdio]),
    Result = read_port(Port, []),
    {ok, Err} = file:read_file(ErrFile),
    _ = file:delete(ErrFile),
    case Result of
        {0, Out} ->
            case split_records(Out, []) of
                {ok, Records} -> {ok, Records};
                {error, Why} -> {error, io_lib:format("~s; stderr: ~ts", [Why, Err])}
            end;
        {Status, _} ->
            {error, io_lib:format("megaphone-xml-events exited ~p; stderr:~n~ts", [Status, Err])}
    end.

read_port(Port, Acc) ->
    receive
        {Port, {data, D}} -> read_port(Port, [Acc, D]);
        {Port, {exit_status, S}} -> {S, iolist_to_binary(Acc)}
    after ?TOOL_TIMEOUT ->
            %% The shell exec'd the tool, so this is the tool's pid.
            case erlang:port_info(Port, os_pid) of
                {os_pid, OsPid} -> os:cmd("kill -9 " ++ integer_to_list(OsPid));
                undefined -> ok
            end,
            catch port_close(Port),
            {timeout, iolist_to_binary(Acc)}
    end.

split_records(<<>>, Acc) ->
    {ok, lists:reverse(Acc)};
split_records(<<Len:32, Record:Len/binary, Rest/binary>>, Acc) ->
    split_records(Rest, [Record | Acc]);
split_records(Rest, Acc) ->
    {error, io_lib:format("truncated output after ~b records (~b bytes left)",
                          [length(Acc), byte_size(Rest)])}.

%%====================================================================
%% fxml's events
%%====================================================================

fxml_events(Chunks, MaxSize) ->
    State0 = fxml_stream:new(self(), MaxSize),
    State = lists:foldl(fun(C, S) -> fxml_stream:parse(S, C) end, State0, Chunks),
    true = fxml_stream:close(State),
    normalise(collect([])).

%% The NIF sends to us from within parse/2, so everything is in the mailbox.
collect(Acc) ->
    receive
        {'$gen_event', E} -> collect([E | Acc]);
        {'$gen_all_state_event', {xmlstreamcdata, _} = E} -> collect([E | Acc])
    after 0 ->
            lists:reverse(Acc)
    end.

normalise([{xmlstreamcdata, A}, {xmlstreamcdata, B} | Rest]) ->
    normalise([{xmlstreamcdata, <<A/binary, B/binary>>} | Rest]);
normalise([{xmlstreamerror, _} = E | _]) ->
    [E];
normalise([E | Rest]) ->
    [E | normalise(Rest)];
normalise([]) ->
    [].

byte_by_byte(Bin) ->
    [<<B>> || <<B>> <= Bin].

split_points(N) when N =< ?ALL_SPLITS_UP_TO ->
    lists:seq(0, N);
split_points(N) ->
    lists:usort([N] ++ [P * N div ?ALL_SPLITS_UP_TO || P <- lists:seq(0, ?ALL_SPLITS_UP_TO)]).

%%====================================================================
%% Checks
%%====================================================================

check_splits(#{swift := {error, Text}} = Case) ->
    fail(Case, "the Swift tool failed", Text);
check_splits(#{path := Path, swift := {ok, Swift}} = Case) ->
    {ok, Bin} = file:read_file(Path),
    N = byte_size(Bin),
    Runs = [{{split, P, N}, [binary:part(Bin, 0, P), binary:part(Bin, P, N - P)]}
            || P <- split_points(N)]
        ++ [{{byte_by_byte, N}, byte_by_byte(Bin)}],
    check_runs(Case, Bin, Swift, Runs, infinity).

check_max_size(#{swift := {error, Text}} = Case) ->
    fail(Case, "the Swift tool (with --max-stanza-size) failed", Text);
check_max_size(#{path := Path, swift := {ok, Swift}} = Case) ->
    {ok, Bin} = file:read_file(Path),
    check_runs(Case, Bin, Swift, [{{byte_by_byte, byte_size(Bin)}, byte_by_byte(Bin)}], ?MAX_SIZE).

%% Stops at the first run that differs; prints the first error-reason
%% difference seen (a note, not a failure).
check_runs(Case, Bin, Swift, Runs, MaxSize) ->
    Notes = lists:foldl(
              fun({How, Chunks}, NotesAcc) ->
                      Fxml = fxml_events(Chunks, MaxSize),
                      case compare(Swift, Fxml) of
                          {ok, []} -> NotesAcc;
                          {ok, Note} -> [{How, Note} | NotesAcc];
                          {differ, I, SwiftEv, FxmlEv} ->
                              fail(Case, describe(How, Bin, MaxSize, I, SwiftEv, FxmlEv, Swift, Fxml))
                      end
              end, [], Runs),
    case lists:reverse(Notes) of
        [] ->
            ok;
        [{How, {error_reason, SwiftReason, FxmlReason}} | _] ->
            io:format(user, "~nnote: ~s: error reasons differ (~s): swift ~tp, fxml ~tp~n",
                      [maps:get(name, Case), how(How), SwiftReason, FxmlReason])
    end.

%% {ok, []} | {ok, {error_reason, Swift, Fxml}} | {differ, Index, SwiftEv, FxmlEv}
compare(Swift, Fxml) ->
    case lists:reverse(Swift) of
        [{xmlstreamerror, {restricted_xml, _}} | RevBefore] ->
            compare_prefix(lists:reverse(RevBefore), Fxml, 1);
        _ ->
            compare_exact(Swift, Fxml, 1)
    end.

compare_exact([], [], _) ->
    {ok, []};
compare_exact([{xmlstreamerror, R}], [{xmlstreamerror, R}], _) ->
    {ok, []};
compare_exact([{xmlstreamerror, R1}], [{xmlstreamerror, R2}], _) ->
    {ok, {error_reason, R1, R2}};
compare_exact([E | S], [E | F], I) ->
    compare_exact(S, F, I + 1);
compare_exact(S, F, I) ->
    {differ, I, first(S), first(F)}.

compare_prefix([], _, _) ->
    {ok, []};
compare_prefix([{xmlstreamcdata, D}], [{xmlstreamcdata, FD} | _], I) ->
    case binary:longest_common_prefix([D, FD]) =:= byte_size(D) of
        true -> {ok, []};
        false -> {differ, I, {xmlstreamcdata, D}, {xmlstreamcdata, FD}}
    end;
compare_prefix([E | S], [E | F], I) ->
    compare_prefix(S, F, I + 1);
compare_prefix(S, F, I) ->
    {differ, I, first(S), first(F)}.

first([E | _]) -> E;
first([]) -> 'end of events'.

%%====================================================================
%% Failure messages
%%====================================================================

describe(How, Bin, MaxSize, I, SwiftEv, FxmlEv, Swift, Fxml) ->
    io_lib:format("fxml ~s (max size ~p) differs at event #~b (~b identical before it)~n"
                  "    swift: ~ts~n"
                  "    fxml:  ~ts~n"
                  "~s"
                  "  all swift events: ~ts~n"
                  "  all fxml events:  ~ts",
                  [how(How), MaxSize, I, I - 1, show(SwiftEv), show(FxmlEv),
                   around_split(How, Bin), show(Swift), show(Fxml)]).

how({split, P, N}) -> io_lib:format("split at byte ~b of ~b", [P, N]);
how({byte_by_byte, N}) -> io_lib:format("fed byte by byte (~b bytes)", [N]).

around_split({split, P, _}, Bin) ->
    Before = binary:part(Bin, max(0, P - 24), min(P, 24)),
    After = binary:part(Bin, P, min(byte_size(Bin) - P, 24)),
    io_lib:format("  bytes around the split: ~tp | ~tp~n", [Before, After]);
around_split(_, _) ->
    "".

show(Term) ->
    io_lib:format("~tP", [Term, 40]).

fail(#{name := Name, path := Path, origin := Origin}, What, Detail) ->
    Where = case Origin of
                corpus -> "";
                {generated, Seed, Label} ->
                    io_lib:format(" (generated ~s, seed ~b: MEGAPHONE_XML_SEED=~b to repeat)",
                                  [Label, Seed, Seed])
            end,
    Msg = lists:flatten(io_lib:format("~s~s: ~ts~n  ~ts~n  file: ~s~n",
                                      [Name, Where, What, Detail, Path])),
    io:format(user, "~n~ts", [Msg]),
    erlang:error({xml_diff_failed, Name}).

fail(Case, Detail) ->
    fail(Case, "events differ", Detail).

%%====================================================================
%% Internal functions
%%====================================================================

chunks([], _) -> [];
chunks(List, N) when length(List) =< N -> [List];
chunks(List, N) ->
    {A, B} = lists:split(N, List),
    [A | chunks(B, N)].

%% The repository, as megaphone_test_node finds it ($MEGAPHONE_ROOT, else
%% the directory up from the sources that holds rebar.config).
repo_root() ->
    megaphone_test_node:repo_root().
