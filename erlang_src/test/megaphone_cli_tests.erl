%%%----------------------------------------------------------------------
%%% File    : megaphone_cli_tests.erl
%%% Purpose : The megaphone command line: start-up failures are one clear line
%%%----------------------------------------------------------------------

%% @doc Runs the real binary with bad arguments and in bad surroundings and
%% checks that it says what is wrong on an `Error:' line and exits non-zero,
%% without a stack trace. (The megaphone module has no `_tests' of its own
%% here; rebar.config lists this module.)
-module(megaphone_cli_tests).

-include_lib("eunit/include/eunit.hrl").

cli_test_() ->
    {timeout, 60,
     [{"a bad --name is refused", fun bad_name/0},
      {"--cookie and --cookie-file together are refused", fun both_cookies/0},
      {"an unreadable cookie file", fun unreadable_cookie_file/0},
      {"a distribution port in use", fun port_in_use/0},
      {"a node name already registered in epmd", fun name_in_use/0},
      {"no epmd and none can be started", fun epmd_unreachable/0}]}.

bad_name() ->
    {Status, Out} = run(["--name", "bad name", "--cookie", "c"]),
    ?assertEqual(64, Status),
    assert_error_line("--name", Out).

both_cookies() ->
    {Status, Out} = run(["--cookie", "a", "--cookie-file", "/tmp/x"]),
    ?assertEqual(64, Status),
    assert_error_line("not both", Out).

unreadable_cookie_file() ->
    {Status, Out} = run(["--name", alive(), "--cookie-file", "/nonexistent/megaphone/cookie"]),
    ?assertEqual(1, Status),
    assert_error_line("cannot read cookie file /nonexistent/megaphone/cookie", Out).

port_in_use() ->
    {ok, L} = gen_tcp:listen(0, [{reuseaddr, true}]),
    {ok, Port} = inet:port(L),
    try
        {Status, Out} = run(["--name", alive(), "--cookie", "c", "--dist-port", integer_to_list(Port)]),
        ?assertEqual(1, Status),
        assert_error_line("distribution port " ++ integer_to_list(Port) ++ " is already in use", Out)
    after
        gen_tcp:close(L)
    end.

name_in_use() ->
    Fixture = megaphone_test_node:start(),
    try
        #{node := Node} = Fixture,
        [Alive, _Host] = string:split(atom_to_list(Node), "@"),
        {Status, Out} = run(["--name", Alive, "--cookie", "c"]),
        ?assertEqual(1, Status),
        assert_error_line("already registered in epmd", Out)
    after
        megaphone_test_node:stop(Fixture)
    end.

%% No epmd answers on the port ERL_EPMD_PORT names, and PATH has no epmd
%% to start: the node gives up with a message instead of hanging.
epmd_unreachable() ->
    {ok, L} = gen_tcp:listen(0, []),
    {ok, Free} = inet:port(L),
    ok = gen_tcp:close(L),
    {Status, Out} = run(["--name", alive(), "--cookie", "c"],
                        [{"ERL_EPMD_PORT", integer_to_list(Free)}, {"PATH", "/nonexistent"}]),
    ?assertEqual(1, Status),
    assert_error_line("epmd is not reachable", Out).

%%====================================================================
%% Helpers
%%====================================================================

alive() ->
    "megaphone_cli" ++ integer_to_list(erlang:unique_integer([positive])).

run(Args) ->
    run(Args, []).

%% Runs the binary to its exit (at most 30 s) and returns its status and output.
run(Args, Env) ->
    Bin = megaphone_test_node:check_binary(),
    Port = open_port({spawn_executable, Bin},
                     [{args, Args}, {env, Env}, exit_status, stderr_to_stdout, binary]),
    collect(Port, <<>>, erlang:monotonic_time(millisecond) + 30000).

collect(Port, Acc, Deadline) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, Data}} -> collect(Port, <<Acc/binary, Data/binary>>, Deadline);
        {Port, {exit_status, Status}} -> {Status, binary_to_list(Acc)}
    after Left ->
            catch port_close(Port),
            erlang:error({no_exit, Acc})
    end.

%% Exactly one `Error:' line, containing Text; no Swift crash report.
assert_error_line(Text, Out) ->
    Lines = string:split(Out, "\n", all),
    ErrorLines = [L || L <- Lines, lists:prefix("Error: ", L)],
    ?assertMatch([_], ErrorLines, Out),
    [Line] = ErrorLines,
    ?assertNotEqual(nomatch, string:find(Line, Text), Out),
    ?assertEqual(nomatch, string:find(Out, "Fatal error"), Out),
    ?assertEqual(nomatch, string:find(Out, "Stack dump"), Out).
