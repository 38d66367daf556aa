%%%----------------------------------------------------------------------
%%% File    : megaphone_c2s.erl
%%% Purpose : Start Megaphone sessions as ejabberd_c2s does, able to hibernate
%%%----------------------------------------------------------------------

%% @doc The `p1_server' callback module of a Megaphone session: an
%% `ejabberd_c2s' session exactly as `ejabberd_c2s:start/3' starts one
%% (`xmpp_stream_in' with `ejabberd_c2s' as its callback module and the same
%% process limits), with one addition: on `{megaphone_idle, ConnId}' from its
%% Megaphone node, an established session hibernates.
%%
%% Why a callback module of our own: an idle c2s process never collects its
%% garbage (a process collects only when it allocates), so it keeps the heap
%% its login grew (~30 KB). `erlang:hibernate/3' shrinks it to the live data
%% and drops the stack; `p1_server' does that when a callback returns
%% `{noreply, State, hibernate}', but `xmpp_stream_in' never returns it. This
%% module passes every callback to `xmpp_stream_in' unchanged, so the
%% session is the same process with the same state, and only adds that
%% return. It relies on `xmpp_stream_in''s exported gen_server callbacks and
%% on `p1_server''s documented `hibernate' return, nothing internal; the
%% integration tests (`test_hibernation.py') check that a hibernated session
%% still gets messages, presence, roster pushes, pings, stream management
%% acks and resumption, kicks and `max_fsm_queue', and that `sys:get_state'
%% and `ejabberdctl' answer.
%%
%% Only a session whose stream timeout is off (`infinity': established, no
%% negotiation clock running) hibernates; `hibernate' as the return value
%% would cancel that clock. Any message wakes it: the next stanza, presence,
%% timer or system message.
-module(megaphone_c2s).

-behaviour(p1_server).

%% API.
-export([start/3]).

%% p1_server callbacks.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).
-export([code_change/3]).

%% Starts a session as ejabberd_c2s:start/3 does (xmpp_stream_in:start/3 with
%% ejabberd's process limits, max_fsm_queue), with this module in front.
-spec start(module(), term(), [proplists:property()]) -> {ok, pid()} | {error, term()} | ignore.
start(SockMod, Socket, Opts) ->
    p1_server:start(?MODULE, [ejabberd_c2s, {SockMod, Socket}, Opts],
                    ejabberd_config:fsm_limit_opts(Opts)).

-spec init(list()) -> term().
init(Args) ->
    xmpp_stream_in:init(Args).

-spec handle_call(term(), term(), map()) -> term().
handle_call(Request, From, State) ->
    xmpp_stream_in:handle_call(Request, From, State).

-spec handle_cast(term(), map()) -> term().
handle_cast(Msg, State) ->
    xmpp_stream_in:handle_cast(Msg, State).

-spec handle_info(term(), map()) -> term().
handle_info({megaphone_idle, _ConnId}, #{stream_timeout := infinity} = State) ->
    %% The `rand' state a login left in the dictionary (~330 bytes) is not
    %% the session's: `rand' seeds itself again if it is ever needed.
    erase(rand_seed),
    {noreply, State, hibernate};
handle_info(Info, State) ->
    xmpp_stream_in:handle_info(Info, State).

-spec terminate(term(), map()) -> term().
terminate(Reason, State) ->
    xmpp_stream_in:terminate(Reason, State).

-spec code_change(term(), map(), term()) -> {ok, map()}.
code_change(OldVsn, State, Extra) ->
    xmpp_stream_in:code_change(OldVsn, State, Extra).
