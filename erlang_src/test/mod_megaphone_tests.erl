%%%----------------------------------------------------------------------
%%% File    : mod_megaphone_tests.erl
%%% Purpose : mod_megaphone detaches from its Megaphone nodes when ejabberd begins to stop
%%%----------------------------------------------------------------------

%% @doc ejabberd_app:prep_stop/1 runs the `ejabberd_stopping' hook, then stops
%% the listeners and ejabberd_sm, and only later stops the modules. A
%% mod_megaphone that detached only when it stopped was still offered
%% connections in between, which could not become sessions (issue 15,
%% `leave_cluster' and `ejabberdctl stop' of one node of a cluster). Here the
%% module's gen_server runs in this VM as it runs in ejabberd (only its
%% gen_server: start/2 needs a running ejabberd), controlling the real
%% binary; `mod_megaphone:stopping/0' is the hook.
-module(mod_megaphone_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOCALHOST, {127, 0, 0, 1}).
-define(WAIT, 10000).
-define(RETRY, 100).

stopping_test_() ->
    {foreach,
     fun() -> megaphone_test_node:start() end,
     fun megaphone_test_node:cleanup/1,
     [megaphone_test_node:instance("ejabberd_stopping detaches from every Megaphone node, "
                                   "which offers this node nothing more",
                                   fun stopping_detaches/1, 60)]}.

stopping_detaches(#{node := Node}) ->
    Opts = maps:merge(maps:from_list(mod_megaphone:mod_options(<<"localhost">>)),
                      #{nodes => #{Node => #{listen => [{tcp, ?LOCALHOST, 0}]}},
                        connect_retry => ?RETRY,
                        %% raw bytes: the parsed mode asks ejabberd for the c2s options
                        parser => ejabberd}),
    {ok, Pid} = gen_server:start({local, mod_megaphone}, mod_megaphone, [<<"localhost">>, Opts], []),
    try
        megaphone_test_client:poll(fun() -> gen_server:call(mod_megaphone, nodes) == [{Node, started, 0}] end, ?WAIT),
        ?assertMatch(#{controllers := 1, listeners := [{tcp, _, _}]}, stats(Node)),

        ?assertEqual(ok, mod_megaphone:stopping()),
        %% Gone from the module's table at once: a connection announced
        %% meanwhile is refused (start_session/6), no retry attaches it again.
        ?assertEqual([], gen_server:call(mod_megaphone, nodes)),
        %% The `start' with no listeners: from the last controller the node
        %% closes its listeners (and keeps it, listening on nothing); from
        %% one of several it detaches only that one (test_cluster.py).
        megaphone_test_client:poll(fun() -> maps:get(listeners, stats(Node)) == [] end, ?WAIT),
        %% And it stays so: the absence of an event has no condition to wait
        %% for, so watch for several retry periods of the module.
        Until = erlang:monotonic_time(millisecond) + 5 * ?RETRY,
        stays_detached(Node, Until),
        ?assert(is_process_alive(Pid))
    after
        gen_server:stop(Pid)
    end,
    %% With the module gone (ejabberd stops it later), the hook is harmless.
    ?assertEqual(ok, mod_megaphone:stopping()),
    ?assertMatch(#{listeners := []}, stats(Node)).

%%====================================================================
%% Helpers
%%====================================================================

stats(Node) ->
    megaphone_test_client:stats(Node).

stays_detached(Node, Until) ->
    ?assertMatch(#{listeners := []}, stats(Node)),
    case erlang:monotonic_time(millisecond) < Until of
        true ->
            timer:sleep(?RETRY div 4),
            stays_detached(Node, Until);
        false ->
            ok
    end.
