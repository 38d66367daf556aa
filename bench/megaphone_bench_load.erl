%%% XMPP load client of the benchmarks: raw-XML XMPP sessions over gen_tcp or
%%% ssl, shared by bench/xmpp (megaphone_bench_xmpp, which runs it in several
%%% client nodes) and bench/run-tls (megaphone_bench_tls, login only).
%%%
%%% Login (login/4): stream header, SASL PLAIN, stream restart, resource
%%% binding, initial presence. A pool with `tls => starttls' first runs
%%% STARTTLS on each plain connection (starttls/1: TLS 1.3, X25519) and logs
%%% in over the TLS socket. bench/xmpp then waits for the presence echo
%%% (await_presence/2): ejabberd sends a session's initial presence back to
%%% the session itself, so the echo proves the session is routable.
%%%
%%% Pools (bench/xmpp): start_pool/1, run in a client node (one OS process)
%%% through rpc, starts one process per session, at most `concurrency' of
%%% them logging in at a time, from the source address `src_ip' (each client
%%% node its own 127.0.0.x, so that the ephemeral ports of one address do not
%%% run out). A pool answers call/3 requests:
%%%   status            #{logged_in, failed, down, reasons, last_login_us,
%%%                     negotiated => [{none | <<"Protocol Cipher">>, Count}]}
%%%   ping              every live session sends an XEP-0199 ping to the
%%%                     server and waits for the result: #{ok, failed, reasons}
%%%   {chat, K}         each session (paired with `partners') sends K chat
%%%                     messages to its partner's full JID, then one more per
%%%                     message received (K in flight each way)
%%%   {chat_pairs, Pairs, K}  the same for the pairs [{IxA, IxB}] of this pool's
%%%                     users only, whatever `partners' says (bench/xmpp
%%%                     --cluster picks pairs by the ejabberd node each
%%%                     session lives on); chat_stop then goes to them alone
%%%   {measure, Bool}   latency samples are kept only while true
%%%   counters          {delivered, seq_errors, error_stanzas} since the pool began
%%%   chat_stop         each chatting session sends "END LastSeq", waits for its
%%%                     partner's END, checks it saw every number once and in
%%%                     order, and reports: merged #{received, seq_errors,
%%%                     error_stanzas, unfinished, hist}
%%%   close             every session sends </stream:stream> and closes (RST)
%%%   {probe, P, Tags}  wake-up latency (issue 13): for the first P pairs, one
%%%                     after the other, the odd user sends its partner one
%%%                     message per Tag (back to back, each once the previous
%%%                     arrived): #{Tag => [LatencyUs]}. The first finds both
%%%                     sessions as they were (hibernated, after an idle spell),
%%%                     the next ones awake
%%%   {storm, Tag}      every session sends its partner one message at once and
%%%                     waits for its partner's: #{ok, failed, reasons, lats}
%%%   {trickle, Rate, Secs}  Rate messages/s (spread over 10 ms ticks), each from
%%%                     a random session to its partner, for Secs: #{sent}
%%% A chat body is "Seq SendTime Padding": Seq counts from 1 per sender, and
%%% SendTime is erlang:monotonic_time(microsecond) of the sending node;
%%% partners live in the same pool (same node), so the receiver's clock is
%%% the sender's. Latencies go into a histogram of 5% wide buckets (hist_bucket/1).
-module(megaphone_bench_load).

%% Shared XMPP client functions (also used by megaphone_bench_tls).
-export([login/4, await_presence/3, send/2, recv_until/2, recv_until_any/2, check/2, setopts/3]).
%% Pools (bench/xmpp).
-export([start_pool/1, call/3, hist_bucket/1, bucket_value/1, percentile/2, merge_hist/2]).
%% The receiver's checks, on crafted input (bench/xmpp runs it first).
-export([selftest/0]).

-import(megaphone_bench_lib, [deadline/1, remaining/1]).

-define(STREAM, "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
                "xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>").
-define(MSG_END, <<"</message>">>).
-define(LOGIN_TIMEOUT, 60000).
%% Guards on the active-mode messages of gen_tcp and ssl sockets alike.
-define(DATA(Tag), (Tag =:= tcp orelse Tag =:= ssl)).
-define(CLOSED(Tag), (Tag =:= tcp_closed orelse Tag =:= ssl_closed)).
-define(ERROR(Tag), (Tag =:= tcp_error orelse Tag =:= ssl_error)).

-type sock() :: {gen_tcp | ssl, term()}.

%%====================================================================
%% XMPP client functions
%%====================================================================

%% Stream header, SASL PLAIN, stream restart, bind Resource, initial presence.
%% Throws {xmpp, Why} on any failure.
-spec login(sock(), binary(), binary(), iodata()) -> ok.
login(S, User, Password, Resource) ->
    send(S, ?STREAM),
    F1 = recv_until(S, <<"</stream:features>">>),
    binary:match(F1, <<"PLAIN">>) =/= nomatch orelse throw({xmpp, {no_plain, F1}}),
    send(S, ["<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>",
             base64:encode(<<0, User/binary, 0, Password/binary>>), "</auth>"]),
    A = recv_until_any(S, [<<"<success">>, <<"</failure>">>]),
    binary:match(A, <<"<success">>) =/= nomatch orelse throw({xmpp, {auth_failed, A}}),
    send(S, ?STREAM),
    _ = recv_until(S, <<"</stream:features>">>),
    send(S, ["<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>",
             Resource, "</resource></bind></iq>"]),
    B = recv_until(S, <<"</iq>">>),
    binary:match(B, <<"type='result'">>) =/= nomatch orelse throw({xmpp, {bind_failed, B}}),
    send(S, "<presence/>").

%% Waits for the server to send the session's own initial presence back to
%% FullJid; returns the bytes received after it.
-spec await_presence(sock(), binary(), timeout()) -> binary().
await_presence(S, FullJid, Timeout) ->
    From = <<"from='", FullJid/binary, "'">>,
    Acc = recv_until_any(S, [<<"<presence">>], <<>>, deadline(Timeout)),
    await_presence_from(S, From, Acc, deadline(Timeout)).

await_presence_from(S, From, Acc, Deadline) ->
    case binary:match(Acc, <<"<presence">>) of
        nomatch ->
            await_presence_from(S, From, recv_more(S, [<<"<presence">>], Acc, Deadline), Deadline);
        {P, _} ->
            Rest = binary:part(Acc, P, byte_size(Acc) - P),
            %% The whole start tag: up to its '>'.
            case binary:match(Rest, <<">">>) of
                nomatch ->
                    await_presence_from(S, From, recv_more(S, [<<">">>], Acc, Deadline), Deadline);
                {E, 1} ->
                    Tag = binary:part(Rest, 0, E),
                    After = binary:part(Rest, E + 1, byte_size(Rest) - E - 1),
                    case binary:match(Tag, From) =/= nomatch andalso
                        binary:match(Tag, <<"type=">>) =:= nomatch of
                        true -> After;
                        false -> await_presence_from(S, From, After, Deadline)
                    end
            end
    end.

recv_more({T, Sock}, Markers, Acc, Deadline) ->
    case T:recv(Sock, 0, max(1, remaining(Deadline))) of
        {ok, Data} -> <<Acc/binary, Data/binary>>;
        {error, Reason} -> throw({xmpp, {recv, Reason, Markers, Acc}})
    end.

-spec send(sock(), iodata()) -> ok.
send({T, S}, Data) ->
    case T:send(S, Data) of
        ok -> ok;
        {error, Reason} -> throw({xmpp, {send, Reason}})
    end.

-spec recv_until(sock(), binary()) -> binary().
recv_until(S, Marker) ->
    recv_until_any(S, [Marker]).

-spec recv_until_any(sock(), [binary()]) -> binary().
recv_until_any(S, Markers) ->
    recv_until_any(S, Markers, <<>>, deadline(30000)).

recv_until_any(S, Markers, Acc, Deadline) ->
    case binary:match(Acc, Markers) of
        nomatch -> recv_until_any(S, Markers, recv_more(S, Markers, Acc, Deadline), Deadline);
        _ -> Acc
    end.

-spec check({ok, term()} | term(), term()) -> {ok, term()}.
check({ok, _} = Ok, _What) -> Ok;
check(Other, What) -> throw({xmpp, {What, Other}}).

-spec setopts(gen_tcp | ssl, term(), list()) -> ok | {error, term()}.
setopts(ssl, S, Opts) -> ssl:setopts(S, Opts);
setopts(gen_tcp, S, Opts) -> inet:setopts(S, Opts).

%%====================================================================
%% Pools
%%====================================================================

%% Spec: #{port, src_ip, users => [{Ix, User, Password}], resource,
%% concurrency, body, partners => #{Ix => PartnerIx}, tls => none | starttls}. Returns the pool's pid
%% (not linked: the pool outlives the rpc that started it).
-spec start_pool(map()) -> pid().
start_pool(Spec) ->
    spawn(fun() -> pool_init(Spec) end).

%% A request to a pool (possibly on another node); the pool's reply.
-spec call(pid(), term(), timeout()) -> term().
call(Pool, Req, Timeout) ->
    Mon = erlang:monitor(process, Pool),
    Pool ! {call, self(), Mon, Req},
    receive
        {reply, Mon, Reply} ->
            erlang:demonitor(Mon, [flush]),
            Reply;
        {'DOWN', Mon, process, _, Why} ->
            error({pool_down, Req, Why})
    after Timeout ->
        erlang:demonitor(Mon, [flush]),
        error({pool_timeout, Req})
    end.

-record(pool, {spec, queue = [], active = 0, sessions = #{}, monitors = #{},
               logged_in = 0, failed = 0, down = 0, reasons = [], last_login = 0,
               negotiated = #{}, ctr, flag, waiters = [],
               %% The sessions a {chat_pairs, ...} started (chat_stop's
               %% addressees); all: every session ({chat, K}).
               chatting = all}).

pool_init(Spec = #{users := Users}) ->
    process_flag(trap_exit, true),
    maps:get(tls, Spec, none) =:= none orelse ({ok, _} = application:ensure_all_started(ssl)),
    %% 1 delivered, 2 seq errors, 3 error stanzas.
    Ctr = counters:new(3, [write_concurrency]),
    %% 1: keep latency samples.
    Flag = atomics:new(1, []),
    St = #pool{spec = Spec, queue = Users, ctr = Ctr, flag = Flag},
    pool_loop(fill(St)).

%% Starts sessions until `concurrency' are logging in.
fill(St = #pool{queue = [], active = _}) ->
    St;
fill(St = #pool{spec = #{concurrency := W}, active = A}) when A >= W ->
    St;
fill(St = #pool{spec = Spec, queue = [{Ix, User, Password} | Rest], active = A,
                sessions = Ss, monitors = Ms, ctr = Ctr, flag = Flag}) ->
    Pool = self(),
    %% Not the whole Spec: its user list would be copied into every session.
    SSpec = maps:with([port, src_ip, resource, body, tls], Spec),
    {Pid, Mon} = spawn_monitor(fun() -> session(Pool, SSpec, Ix, User, Password, Ctr, Flag) end),
    fill(St#pool{queue = Rest, active = A + 1, sessions = Ss#{Ix => Pid}, monitors = Ms#{Mon => Ix}}).

pool_loop(St) ->
    receive
        {logged_in, _Ix, At, Neg} ->
            Ns = maps:update_with(Neg, fun(C) -> C + 1 end, 1, St#pool.negotiated),
            pool_loop(fill(St#pool{active = St#pool.active - 1, logged_in = St#pool.logged_in + 1,
                                   last_login = max(At, St#pool.last_login), negotiated = Ns}));
        {'DOWN', Mon, process, _, Why} ->
            #pool{monitors = Ms, sessions = Ss} = St,
            Ix = maps:get(Mon, Ms),
            St1 = St#pool{monitors = maps:remove(Mon, Ms), sessions = maps:remove(Ix, Ss)},
            pool_loop(fill(session_down(St1, Why)));
        {call, From, Ref, Req} ->
            pool_loop(pool_request(Req, From, Ref, St));
        _ ->
            pool_loop(St)
    end.

%% A session that ends: during login (a failed login), or after it (down);
%% `closed' is the end we asked for.
session_down(St, closed) ->
    St;
session_down(St = #pool{reasons = Rs}, {login_failed, Why}) ->
    St#pool{active = St#pool.active - 1, failed = St#pool.failed + 1, reasons = keep(Why, Rs)};
session_down(St = #pool{reasons = Rs}, Why) ->
    St#pool{down = St#pool.down + 1, reasons = keep(Why, Rs)}.

keep(Why, Rs) when length(Rs) < 5 -> Rs ++ [Why];
keep(_, Rs) -> Rs.

reply(From, Ref, Reply) ->
    From ! {reply, Ref, Reply}.

pool_request(status, From, Ref, St) ->
    reply(From, Ref, #{logged_in => St#pool.logged_in, failed => St#pool.failed,
                       down => St#pool.down, reasons => St#pool.reasons,
                       live => maps:size(St#pool.sessions), last_login_us => St#pool.last_login,
                       negotiated => maps:to_list(St#pool.negotiated)}),
    St;
pool_request(ping, From, Ref, St = #pool{sessions = Ss}) ->
    %% Every session pings at once; the results are collected by a helper
    %% process so that the pool keeps serving.
    Pool = self(),
    spawn(fun() -> reply(From, Ref, fan_out(Pool, maps:values(Ss), ping, 120000)) end),
    St;
pool_request({chat, K}, From, Ref, St = #pool{spec = Spec, sessions = Ss}) ->
    Partners = maps:get(partners, Spec),
    Res = maps:get(resource, Spec),
    Users = maps:from_list([{Ix, U} || {Ix, U, _} <- maps:get(users, Spec)]),
    [Pid ! {chat, jid(maps:get(maps:get(Ix, Partners), Users), Res), K}
     || {Ix, Pid} <- maps:to_list(Ss)],
    reply(From, Ref, ok),
    St#pool{chatting = all};
pool_request({chat_pairs, Pairs, K}, From, Ref, St = #pool{spec = Spec, sessions = Ss}) ->
    Res = maps:get(resource, Spec),
    Users = maps:from_list([{Ix, U} || {Ix, U, _} <- maps:get(users, Spec)]),
    Jid = fun(Ix) -> jid(maps:get(Ix, Users), Res) end,
    %% A session that went down is missing from Ss: the pool crashes and the
    %% caller's call/3 fails with pool_down, which fails the run.
    Started = lists:flatmap(fun({A, B}) ->
                                    PA = maps:get(A, Ss),
                                    PB = maps:get(B, Ss),
                                    PA ! {chat, Jid(B), K},
                                    PB ! {chat, Jid(A), K},
                                    [PA, PB]
                            end, Pairs),
    reply(From, Ref, ok),
    St#pool{chatting = Started};
pool_request({measure, On}, From, Ref, St = #pool{flag = Flag}) ->
    atomics:put(Flag, 1, case On of true -> 1; false -> 0 end),
    reply(From, Ref, ok),
    St;
pool_request(counters, From, Ref, St = #pool{ctr = Ctr}) ->
    reply(From, Ref, {counters:get(Ctr, 1), counters:get(Ctr, 2), counters:get(Ctr, 3)}),
    St;
pool_request(chat_stop, From, Ref, St = #pool{sessions = Ss, chatting = Chatting}) ->
    Pool = self(),
    Pids = case Chatting of
               all -> maps:values(Ss);
               _ -> Chatting
           end,
    spawn(fun() -> reply(From, Ref, merge_chat(fan_out(Pool, Pids, chat_stop, 60000))) end),
    St#pool{chatting = all};
pool_request({probe, P, Tags}, From, Ref, St) ->
    Pairs = lists:sublist(pairs(St), P),
    spawn(fun() -> reply(From, Ref, probe(Pairs, Tags, #{})) end),
    St;
pool_request({storm, Tag}, From, Ref, St = #pool{sessions = Ss}) ->
    Jid = partner_jids(St),
    Sends = [{Pid, Jid(Ix)} || {Ix, Pid} <- maps:to_list(Ss)],
    spawn(fun() -> reply(From, Ref, storm(Sends, Tag)) end),
    St;
pool_request({trickle, Rate, Secs}, From, Ref, St = #pool{sessions = Ss}) ->
    Jid = partner_jids(St),
    Sends = list_to_tuple([{Pid, Jid(Ix)} || {Ix, Pid} <- maps:to_list(Ss)]),
    spawn(fun() -> reply(From, Ref, trickle(Sends, Rate, deadline(Secs * 1000), erlang:monotonic_time(millisecond), 0)) end),
    St;
pool_request(close, From, Ref, #pool{sessions = Ss}) ->
    [Pid ! close || Pid <- maps:values(Ss)],
    Mons = [erlang:monitor(process, P) || P <- maps:values(Ss)],
    [receive {'DOWN', M, _, _, _} -> ok after 30000 -> ok end || M <- Mons],
    reply(From, Ref, ok),
    exit(normal).

%% The pool's live pairs {OddPid, EvenPid}, in index order.
pairs(#pool{spec = #{partners := Partners}, sessions = Ss}) ->
    [{maps:get(I, Ss), maps:get(J, Ss)}
     || {I, J} <- lists:sort(maps:to_list(Partners)), I rem 2 =:= 1, is_map_key(I, Ss), is_map_key(J, Ss)].

%% Ix -> its partner's full JID.
partner_jids(#pool{spec = Spec}) ->
    Users = maps:from_list([{I, U} || {I, U, _} <- maps:get(users, Spec)]),
    Partners = maps:get(partners, Spec),
    Res = maps:get(resource, Spec),
    fun(Ix) -> jid(maps:get(maps:get(Ix, Partners), Users), Res) end.

%% One pair after the other: one message per Tag from A to B, each sent once
%% the previous arrived.
probe([], _Tags, Acc) ->
    Acc;
probe([{A, B} | Rest], Tags, Acc) ->
    BJid = partner_jid_of(A, B),
    Acc1 = lists:foldl(
             fun(Tag, M) ->
                     Ref = make_ref(),
                     B ! {probe_expect, Tag, self(), Ref},
                     A ! {probe_send, BJid, Tag},
                     receive
                         {answer, Ref, {ok, Lat}} -> maps:update_with(Tag, fun(L) -> [Lat | L] end, [Lat], M)
                     after 30000 ->
                         maps:update_with(failed, fun(F) -> F + 1 end, 1, M)
                     end
             end, Acc, Tags),
    probe(Rest, Tags, Acc1).

%% B's full JID: asked of B itself.
partner_jid_of(_A, B) ->
    Ref = make_ref(),
    B ! {whoami, self(), Ref},
    receive {answer, Ref, Jid} -> Jid after 30000 -> error(whoami_timeout) end.

%% Every session expects its partner's message, then every session sends one.
storm(Sends, Tag) ->
    Refs = [begin
                Ref = erlang:monitor(process, Pid),
                Pid ! {probe_expect, Tag, self(), Ref},
                {Ref, Pid}
            end || {Pid, _} <- Sends],
    [Pid ! {probe_send, To, Tag} || {Pid, To} <- Sends],
    Deadline = deadline(120000),
    lists:foldl(
      fun({M, _}, Acc = #{ok := Ok, failed := F, reasons := Rs, lats := Ls}) ->
              receive
                  {answer, M, {ok, Lat}} ->
                      erlang:demonitor(M, [flush]),
                      Acc#{ok := Ok + 1, lats := [Lat | Ls]};
                  {'DOWN', M, process, _, Why} ->
                      Acc#{failed := F + 1, reasons := keep({down, Why}, Rs)}
              after remaining(Deadline) ->
                  erlang:demonitor(M, [flush]),
                  Acc#{failed := F + 1, reasons := keep(storm_timeout, Rs)}
              end
      end, #{ok => 0, failed => 0, reasons => [], lats => []}, Refs).

%% Rate messages/s in 10 ms ticks, each from a random session to its partner.
trickle(Sends, Rate, Deadline, T0, Sent) ->
    case remaining(Deadline) of
        0 ->
            #{sent => Sent};
        _ ->
            Due = Rate * (erlang:monotonic_time(millisecond) - T0) div 1000,
            N = tuple_size(Sends),
            [begin
                 {Pid, To} = element(rand:uniform(N), Sends),
                 Pid ! {probe_send, To, <<"T">>}
             end || _ <- lists:seq(1, max(0, Due - Sent)), N > 0],
            timer:sleep(10),
            trickle(Sends, Rate, Deadline, T0, max(Sent, Due))
    end.

%% Sends {Req, self(), Ref} to each session, collects the answers:
%% #{ok, failed, reasons, results}.
fan_out(_Pool, Pids, Req, Timeout) ->
    Deadline = deadline(Timeout),
    Refs = [{erlang:monitor(process, P), P} || P <- Pids],
    [P ! {Req, self(), M} || {M, P} <- Refs],
    lists:foldl(
      fun({M, _P}, Acc = #{ok := Ok, failed := F, reasons := Rs, results := Res}) ->
              receive
                  {answer, M, {ok, R}} ->
                      erlang:demonitor(M, [flush]),
                      Acc#{ok := Ok + 1, results := [R | Res]};
                  {answer, M, {error, Why}} ->
                      erlang:demonitor(M, [flush]),
                      Acc#{failed := F + 1, reasons := keep(Why, Rs)};
                  {'DOWN', M, process, _, Why} ->
                      Acc#{failed := F + 1, reasons := keep({down, Why}, Rs)}
              after remaining(Deadline) ->
                  erlang:demonitor(M, [flush]),
                  Acc#{failed := F + 1, reasons := keep(timeout, Rs)}
              end
      end, #{ok => 0, failed => 0, reasons => [], results => []}, Refs).

merge_chat(#{ok := Ok, failed := F, reasons := Rs, results := Res}) ->
    lists:foldl(
      fun(R, Acc) ->
              maps:fold(fun(hist, H, A) -> A#{hist := merge_hist(H, maps:get(hist, A))};
                           (K, V, A) -> A#{K := V + maps:get(K, A)}
                        end, Acc, R)
      end,
      #{ok => Ok, failed => F, reasons => Rs, received => 0, sent => 0, seq_errors => 0,
        error_stanzas => 0, unfinished => 0, hist => #{}},
      Res).

-spec merge_hist(#{integer() => integer()}, #{integer() => integer()}) -> #{integer() => integer()}.
merge_hist(A, B) ->
    maps:fold(fun(K, V, M) -> maps:update_with(K, fun(X) -> X + V end, V, M) end, B, A).

%% Latency histogram buckets: 20 per factor e (about 5% wide).
-spec hist_bucket(number()) -> integer().
hist_bucket(Us) when Us < 1 -> 0;
hist_bucket(Us) -> round(math:log(Us) * 20).

-spec bucket_value(integer()) -> float().
bucket_value(B) -> math:exp(B / 20).

%% The P-th percentile (0 < P =< 100) of a histogram, in microseconds.
-spec percentile(#{integer() => integer()}, number()) -> float() | undefined.
percentile(H, _P) when map_size(H) =:= 0 -> undefined;
percentile(H, P) ->
    Sorted = lists:sort(maps:to_list(H)),
    Total = lists:sum([C || {_, C} <- Sorted]),
    Rank = max(1, ceil(Total * P / 100)),
    pick(Sorted, Rank).

pick([{B, C} | _], Rank) when Rank =< C -> bucket_value(B);
pick([{_, C} | Rest], Rank) -> pick(Rest, Rank - C).

jid(User, Resource) -> <<User/binary, "@localhost/", Resource/binary>>.

%%====================================================================
%% A session
%%====================================================================

%% IP_BIND_ADDRESS_NO_PORT (SOL_IP 0, option 24): binding to a source address
%% leaves the port to connect(), which picks one free for the 4-tuple. Without
%% it bind() searches the port table for a port free on that address, and with
%% 17,000 sessions per address that search made the clients' system time, not
%% the servers, set the login rate of a 100,000-session run.
-define(BIND_ADDRESS_NO_PORT, {raw, 0, 24, <<1:32/native>>}).

-record(s, {tr = gen_tcp, sock, pool, ctr, flag, jid, partner, msg_pad, k = 0,
            sent = 0, expect = 1, received = 0, seq_errors = 0, error_stanzas = 0,
            hist = #{}, buf = <<>>, stopping = false, partner_end = undefined,
            stop_from, probe}).

session(Pool, Spec = #{port := Port, src_ip := Src, resource := Res}, Ix, User, Password, Ctr, Flag) ->
    Jid = jid(User, Res),
    {{T, Sock}, Buf} =
        try
            {ok, S} = check(gen_tcp:connect({127, 0, 0, 1}, Port,
                                            [binary, {active, false}, {nodelay, true}, {ip, Src},
                                             {linger, {true, 0}}, ?BIND_ADDRESS_NO_PORT], 30000),
                            connect),
            TS = case maps:get(tls, Spec, none) of
                     none -> {gen_tcp, S};
                     starttls -> starttls(S)
                 end,
            ok = login(TS, User, Password, Res),
            B = await_presence(TS, Jid, ?LOGIN_TIMEOUT),
            {TS, B}
        catch
            throw:{xmpp, Why} -> exit({login_failed, {Ix, Why}});
            error:{badmatch, Other} -> exit({login_failed, {Ix, Other}});
            Class:Reason -> exit({login_failed, {Ix, {Class, Reason}}})
        end,
    Pool ! {logged_in, Ix, os:system_time(microsecond), negotiated({T, Sock})},
    ok = setopts(T, Sock, [{active, once}]),
    Pad = binary:copy(<<"x">>, maps:get(body, Spec, 100)),
    idle(#s{tr = T, sock = Sock, pool = Pool, ctr = Ctr, flag = Flag, jid = Jid, msg_pad = Pad, buf = Buf}).

%% STARTTLS on a fresh plain connection (RFC 6120 5.4): stream header, the
%% features must offer <starttls/>, <proceed/>, then the TLS handshake over the
%% same socket. Returns the TLS socket; login/4 then opens a new stream over it.
starttls(S) ->
    Plain = {gen_tcp, S},
    send(Plain, ?STREAM),
    F = recv_until(Plain, <<"</stream:features>">>),
    binary:match(F, <<"<starttls">>) =/= nomatch orelse throw({xmpp, {no_starttls, F}}),
    send(Plain, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    P = recv_until_any(Plain, [<<"<proceed">>, <<"<failure">>]),
    binary:match(P, <<"<proceed">>) =/= nomatch orelse throw({xmpp, {starttls_refused, P}}),
    {ok, T} = check(ssl:connect(S, tls_client_opts(), 30000), tls_handshake),
    {ssl, T}.

%% TLS 1.3 with X25519 pinned, as bench/run-tls's memory part does, so that
%% every server does the same handshake and keeps the same kind of state. No
%% certificate check (a benchmark against its own test CA) and no resumption
%% (an OTP client keeps no TLS 1.3 session tickets unless asked).
tls_client_opts() ->
    [{verify, verify_none}, {server_name_indication, "localhost"}, {versions, ['tlsv1.3']},
     {supported_groups, [x25519]}].

%% What a session negotiated, for the report: none (plain TCP) or
%% <<"Protocol Cipher">>.
negotiated({gen_tcp, _}) ->
    none;
negotiated({ssl, S}) ->
    case ssl:connection_information(S, [protocol, selected_cipher_suite]) of
        {ok, Info} ->
            #{cipher := C} = proplists:get_value(selected_cipher_suite, Info),
            iolist_to_binary(io_lib:format("~s ~s", [proplists:get_value(protocol, Info), C]));
        {error, _} ->
            unknown
    end.

%% Logged in, nothing in flight: answers pings, starts chatting, closes.
idle(St = #s{tr = T, sock = S}) ->
    receive
        {Tag, S, Data} when ?DATA(Tag) ->
            ok = setopts(T, S, [{active, once}]),
            idle(probe_check(St#s{buf = <<(St#s.buf)/binary, Data/binary>>}));
        {Tag, S} when ?CLOSED(Tag) ->
            exit(Tag);
        {Tag, S, Why} when ?ERROR(Tag) ->
            exit({Tag, Why});
        {probe_expect, Tag, From, Ref} ->
            idle(probe_check(St#s{probe = {Tag, From, Ref}}));
        {probe_send, To, Tag} ->
            ssend(St, probe_msg(To, Tag)),
            idle(St);
        {ping, From, Ref} ->
            From ! {answer, Ref, ping(St)},
            idle(St);
        {chat, PartnerJid, K} ->
            ok = setopts(T, S, [{active, true}]),
            St1 = send_msgs(St#s{partner = PartnerJid, k = K, buf = <<>>}, K),
            %% The partner may have started first: its messages wait in Buf.
            chat_data(St1, St#s.buf);
        {chat_stop, From, Ref} ->
            From ! {answer, Ref, {error, not_chatting}},
            idle(St);
        {whoami, From, Ref} ->
            From ! {answer, Ref, St#s.jid},
            idle(St);
        close ->
            finish(St)
    end.

%% A message whose body is "Tag SendTime" (probes, storms, trickle).
probe_msg(To, Tag) ->
    ["<message to='", To, "' type='chat'><body>", Tag, " ",
     integer_to_binary(erlang:monotonic_time(microsecond)), "</body></message>"].

%% While a probe is expected: once its message is in Buf, the latency goes to
%% whoever asked, and Buf is dropped up to the end of that message.
probe_check(St = #s{probe = undefined}) ->
    St;
probe_check(St = #s{probe = {Tag, From, Ref}, buf = Buf}) ->
    case binary:match(Buf, <<"<body>", Tag/binary, " ">>) of
        nomatch ->
            St;
        {P, L} ->
            After = binary:part(Buf, P + L, byte_size(Buf) - P - L),
            case binary:split(After, <<"</body>">>) of
                [TsB, Rest] ->
                    From ! {answer, Ref, {ok, erlang:monotonic_time(microsecond) - binary_to_integer(TsB)}},
                    St#s{probe = undefined, buf = Rest};
                [_] ->
                    St
            end
    end.

%% XEP-0199 ping to the server; the session is in {active, once}.
ping(#s{tr = T, sock = S}) ->
    Id = integer_to_binary(erlang:unique_integer([positive])),
    case T:send(S, ["<iq type='get' to='localhost' id='p", Id,
                    "'><ping xmlns='urn:xmpp:ping'/></iq>"]) of
        ok -> await_pong(T, S, <<"id='p", Id/binary, "'">>, <<>>, deadline(60000));
        {error, Why} -> {error, {ping_send, Why}}
    end.

await_pong(T, S, IdAttr, Acc, Deadline) ->
    case binary:match(Acc, IdAttr) of
        {P, _} ->
            %% The iq's start tag: back to its '<iq', on to its '>'.
            Head = binary:part(Acc, 0, P),
            Start = case binary:matches(Head, <<"<iq">>) of
                        [] -> 0;
                        Ms -> element(1, lists:last(Ms))
                    end,
            Tag = binary:part(Acc, Start, byte_size(Acc) - Start),
            case binary:match(Tag, <<"type='result'">>) of
                nomatch -> {error, {ping_reply, Tag}};
                _ -> {ok, pong}
            end;
        nomatch ->
            receive
                {Tag, S, Data} when ?DATA(Tag) ->
                    ok = setopts(T, S, [{active, once}]),
                    await_pong(T, S, IdAttr, <<Acc/binary, Data/binary>>, Deadline);
                {Tag, S} when ?CLOSED(Tag) ->
                    exit(Tag)
            after remaining(Deadline) ->
                {error, ping_timeout}
            end
    end.

chat(St = #s{sock = S}) ->
    receive
        {Tag, S, Data} when ?DATA(Tag) ->
            chat_data(St, Data);
        {Tag, S} when ?CLOSED(Tag) ->
            exit(Tag);
        {Tag, S, Why} when ?ERROR(Tag) ->
            exit({Tag, Why});
        {chat_stop, From, Ref} ->
            ssend(St, ["<message to='", St#s.partner, "' type='chat'><body>END ",
                      integer_to_binary(St#s.sent), "</body></message>"]),
            maybe_done(St#s{stopping = true, stop_from = {From, Ref}});
        close ->
            finish(St)
    end.

chat_data(St0 = #s{buf = Buf0}, Data) ->
    {St, Buf} = stanzas(St0, <<Buf0/binary, Data/binary>>, 0),
    maybe_done(St#s{buf = Buf}).

%% Once stopping and the partner's END is in: report and go back to idle.
maybe_done(St = #s{stopping = true, partner_end = End, stop_from = {From, Ref}}) when End =/= undefined ->
    %% Every number 1..End seen once, in order, iff expect = End + 1 with no
    %% error counted on the way.
    Missing = case St#s.expect of
                  E when E =:= End + 1 -> 0;
                  E -> abs(End + 1 - E)
              end,
    Missing > 0 andalso counters:add(St#s.ctr, 2, 1),
    From ! {answer, Ref, {ok, #{received => St#s.received, sent => St#s.sent,
                                seq_errors => St#s.seq_errors + min(Missing, 1),
                                error_stanzas => St#s.error_stanzas, unfinished => 0,
                                hist => St#s.hist}}},
    ok = setopts(St#s.tr, St#s.sock, [{active, once}]),
    idle(St#s{stopping = false, partner_end = undefined, stop_from = undefined, hist = #{}});
maybe_done(St) ->
    chat(St).

%% Splits complete message stanzas off Buf, handles each; replies with one
%% new message per message received (while not stopping), all in one send.
stanzas(St, Buf, Replies) ->
    case binary:match(Buf, ?MSG_END) of
        nomatch ->
            {reply_msgs(St, Replies), Buf};
        {P, L} ->
            Stanza = binary:part(Buf, 0, P),
            Rest = binary:part(Buf, P + L, byte_size(Buf) - P - L),
            {St1, R} = message(St, Stanza),
            stanzas(St1, Rest, Replies + R)
    end.

message(St = #s{ctr = Ctr}, Stanza) ->
    case binary:match(Stanza, <<"type='error'">>) of
        {_, _} ->
            counters:add(Ctr, 3, 1),
            {St#s{error_stanzas = St#s.error_stanzas + 1}, 0};
        nomatch ->
            case body(Stanza) of
                {seq, Seq, SentAt} ->
                    counters:add(Ctr, 1, 1),
                    St1 = St#s{received = St#s.received + 1},
                    St2 = check_seq(St1, Seq),
                    St3 = case atomics:get(St#s.flag, 1) of
                              1 ->
                                  Lat = erlang:monotonic_time(microsecond) - SentAt,
                                  B = hist_bucket(Lat),
                                  St2#s{hist = maps:update_with(B, fun(C) -> C + 1 end, 1, St2#s.hist)};
                              0 ->
                                  St2
                          end,
                    {St3, case St#s.stopping of true -> 0; false -> 1 end};
                {'end', N} ->
                    {St#s{partner_end = N}, 0};
                other ->
                    {St, 0}
            end
    end.

check_seq(St = #s{expect = E}, E) ->
    St#s{expect = E + 1};
check_seq(St = #s{ctr = Ctr, seq_errors = Errs}, Seq) ->
    %% A gap (loss) or a number seen before (duplicate, reordering).
    counters:add(Ctr, 2, 1),
    St#s{seq_errors = Errs + 1, expect = max(St#s.expect, Seq + 1)}.

body(Stanza) ->
    case binary:split(Stanza, <<"<body>">>) of
        [_, AfterOpen] ->
            [Text | _] = binary:split(AfterOpen, <<"</body>">>),
            case binary:split(Text, <<" ">>, [global]) of
                [<<"END">>, N] -> {'end', binary_to_integer(N)};
                [SeqB, TsB | _] -> {seq, binary_to_integer(SeqB), binary_to_integer(TsB)};
                _ -> other
            end;
        _ ->
            other
    end.

reply_msgs(St, 0) -> St;
reply_msgs(St, N) -> send_msgs(St, N).

send_msgs(St = #s{partner = To, sent = Sent, msg_pad = Pad}, N) ->
    Now = integer_to_binary(erlang:monotonic_time(microsecond)),
    Msgs = [["<message to='", To, "' type='chat'><body>", integer_to_binary(Seq), " ", Now, " ",
             Pad, "</body></message>"] || Seq <- lists:seq(Sent + 1, Sent + N)],
    ssend(St, Msgs),
    St#s{sent = Sent + N}.

ssend(#s{tr = T, sock = S}, Data) ->
    case T:send(S, Data) of
        ok -> ok;
        {error, Why} -> exit({send, Why})
    end.

finish(#s{tr = T, sock = S}) ->
    _ = T:send(S, "</stream:stream>"),
    T:close(S),
    exit(closed).

%%====================================================================
%% Self-test of the receiver's checks
%%====================================================================

%% Feeds crafted server output, split at awkward places, through the code a
%% receiving session runs, and checks what it counts: in order; a gap, a
%% duplicate and a reordering; an error stanza; the END check at the end.
%% Returns ok or raises.
-spec selftest() -> ok.
selftest() ->
    Msg = fun(Seq) -> iolist_to_binary(["<message from='a@localhost/r' to='b@localhost/r' type='chat' "
                                        "xmlns='jabber:client'><body>", integer_to_binary(Seq), " ",
                                        integer_to_binary(erlang:monotonic_time(microsecond)),
                                        " xxxx</body></message>"]) end,
    End = fun(N) -> iolist_to_binary(["<message type='chat'><body>END ", integer_to_binary(N),
                                      "</body></message>"]) end,
    Run = fun(Bin) ->
                  St0 = #s{ctr = counters:new(3, []), flag = atomics:new(1, []), stopping = true},
                  %% Every split point between two chunks.
                  [begin
                       <<A:Cut/binary, B/binary>> = Bin,
                       {St1, R1} = stanzas(St0, A, 0),
                       {St2, R2} = stanzas(St1, <<R1/binary, B/binary>>, 0),
                       {St2#s.received, St2#s.seq_errors, St2#s.error_stanzas, St2#s.expect,
                        St2#s.partner_end, R2}
                   end || Cut <- lists:seq(0, byte_size(Bin))]
          end,
    Same = fun(Results) -> [R] = lists:usort(Results), R end,
    {3, 0, 0, 4, 3, <<>>} = Same(Run(iolist_to_binary([Msg(1), Msg(2), Msg(3), End(3)]))),
    %% 1, 3 (gap), 3 (duplicate), 2 (reordered): three errors.
    {4, 3, 0, 4, undefined, <<>>} = Same(Run(iolist_to_binary([Msg(1), Msg(3), Msg(3), Msg(2)]))),
    {1, 0, 1, 2, undefined, <<>>} =
        Same(Run(iolist_to_binary([Msg(1), <<"<message type='error'><body>2 0 x</body></message>">>]))),
    %% The END check: 2 announced, 1 received: one missing.
    St = #s{ctr = counters:new(3, []), flag = atomics:new(1, []), stopping = true, expect = 2,
            partner_end = 2, stop_from = {self(), ref}, sock = undefined},
    try maybe_done(St) catch error:_ -> ok end,
    receive {answer, ref, {ok, #{seq_errors := 1}}} -> ok after 1000 -> error(end_check) end,
    ok.
