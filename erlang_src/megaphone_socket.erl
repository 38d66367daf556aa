%%%----------------------------------------------------------------------
%%% File    : megaphone_socket.erl
%%% Purpose : The socket module ejabberd_c2s drives for a Megaphone connection
%%%----------------------------------------------------------------------

%% @doc The socket module (`xmpp_socket' callback module) of a connection
%% that a Megaphone node holds.
%%
%% Raw-bytes mode: {@link get_owner/1} returns the calling c2s process, so
%% ejabberd's own XML parser runs in the c2s and stream restarts,
%% `max_stanza_size', the shaper and stream management behave as on port
%% 5222. This module only turns socket calls into Megaphone requests:
%% `send/2' is `send_data', `setopts/2' with `{active, once}' is `get_data'
%% (the chunk then arrives to the c2s as `{tcp, ConnId, Binary}'), `close/1'
%% is `close'.
%%
%% Parsed mode (`parser: megaphone'): the Megaphone node parses the client's
%% stream and sends the c2s the events fxml_stream would. {@link get_owner/1}
%% returns the node's pid, so xmpp_socket creates no parser in the c2s and
%% monitors the node instead (a lost node ends the session at once);
%% `send_xml/2' serialises what the c2s sends; `reset_stream/1' restarts the
%% node's parser (before `<success/>' goes out); the first `setopts/2' opens
%% the node's window of elements and {@link element_handled/1}, run from
%% mod_megaphone's `c2s_handle_recv' hook inside the c2s, gives the credit
%% back in batches.
%%
%% The socket term is `{megaphone, Node, ConnId, tcp | tls}' (raw) or
%% `{megaphone, Node, ConnId, tcp | tls, NodePid}' (parsed); the c2s never
%% looks inside it. Requests go through {@link megaphone} with `noconnect',
%% so a session whose node is gone fails its send instead of setting up a
%% new distribution connection from inside the c2s.
-module(megaphone_socket).

-behaviour(xmpp_socket).

%% xmpp_socket callbacks.
-export([get_owner/1]).
-export([send/2]).
-export([send_xml/2]).
-export([setopts/2]).
-export([close/1]).
-export([get_transport/1]).
-export([peername/1]).
-export([sockname/1]).
-export([change_shaper/2]).
-export([controlling_process/2]).
-export([reset_stream/1]).

%% Parsed mode: credit, from mod_megaphone's hook.
-export([element_handled/1]).
-export([window/0]).

-export_type([socket/0]).

-type socket() :: {megaphone, node(), megaphone:conn_id(), tcp | tls}
                | {megaphone, node(), megaphone:conn_id(), tcp | tls, pid()}.

%% Elements in flight from the node to one session (the `window' of
%% `start'); credit goes back in batches of half of it.
-define(WINDOW, 16).
-define(CREDIT_BATCH, (?WINDOW div 2)).
%% In the c2s's process dictionary, while not 0: elements handled since
%% credit was last given back. (The node and ConnId come from the socket the
%% session holds anyway: an idle session pays one small integer at most.)
-define(HANDLED_KEY, megaphone_handled).

%% Raw mode: the c2s process is its own owner, so it runs ejabberd's parser.
%% Parsed mode: the node is (see the module doc).
-spec get_owner(socket()) -> pid().
get_owner({megaphone, _Node, _ConnId, _Transport}) ->
    self();
get_owner({megaphone, _Node, _ConnId, _Transport, NodePid}) ->
    NodePid.

-spec window() -> pos_integer().
window() ->
    ?WINDOW.

%% Called inside a c2s for each element it has handled, with the session's
%% xmpp_socket state (`#socket_state{sockmod, socket, ...}' of p1_xmpp: its
%% second and third elements); gives the node credit for a batch of them. A
%% no-op for any other socket.
-spec element_handled(tuple()) -> ok.
element_handled(SocketState) when tuple_size(SocketState) >= 3,
                                  element(2, SocketState) =:= ?MODULE,
                                  tuple_size(element(3, SocketState)) =:= 5 ->
    {megaphone, Node, ConnId, _, _} = element(3, SocketState),
    case get(?HANDLED_KEY) of
        Handled when is_integer(Handled), Handled + 1 >= ?CREDIT_BATCH ->
            erase(?HANDLED_KEY),
            _ = megaphone:credit(Node, ConnId, Handled + 1, [noconnect]),
            ok;
        Handled when is_integer(Handled) ->
            put(?HANDLED_KEY, Handled + 1),
            ok;
        undefined ->
            put(?HANDLED_KEY, 1),
            ok
    end;
element_handled(_SocketState) ->
    ok.

%% Queues Data for the client. `{error, closed}' when the node is not
%% connected: the c2s then ends the stream.
-spec send(socket(), iodata()) -> ok | {error, closed}.
send(Socket, Data) ->
    {Node, ConnId} = conn(Socket),
    closed_if_down(megaphone:send_data(Node, ConnId, Data, [noconnect])).

%% Parsed mode: the c2s sends elements; they are serialised here, by
%% fxml's NIF, as ejabberd's own listener does.
-spec send_xml(socket(), {xmlstreamstart, binary(), [{binary(), binary()}]} |
                         {xmlstreamelement, fxml:xmlel()} |
                         {xmlstreamend, binary()} |
                         {xmlstreamraw, iodata()}) -> ok | {error, closed}.
send_xml(Socket, {xmlstreamstart, Name, Attrs}) ->
    send(Socket, fxml:element_to_header({xmlel, Name, Attrs, []}));
send_xml(Socket, {xmlstreamelement, El}) ->
    send(Socket, fxml:element_to_binary(El));
send_xml(Socket, {xmlstreamend, Name}) ->
    send(Socket, [<<"</">>, Name, <<">">>]);
send_xml(Socket, {xmlstreamraw, Data}) ->
    send(Socket, Data).

%% `{active, once}' asks the node for the next chunk, to be sent to the
%% calling c2s process. Other options have no meaning here.
%% Parsed mode: the c2s activates its socket once, at accept; that opens the
%% node's window (see element_handled/1 for the rest).
-spec setopts(socket(), [{active, once | boolean()} | term()]) -> ok | {error, closed}.
setopts(Socket, Opts) ->
    {Node, ConnId} = conn(Socket),
    case lists:member({active, once}, Opts) of
        true ->
            closed_if_down(megaphone:get_data(Node, ConnId, [noconnect]));
        false ->
            ok
    end.

%% Flushes what is queued, then closes. The c2s may call it more than once
%% (close, release, terminate); the node ignores a close for a connection it
%% no longer has.
-spec close(socket()) -> ok.
close(Socket) ->
    {Node, ConnId} = conn(Socket),
    _ = megaphone:close(Node, ConnId, [noconnect]),
    ok.

%% `tcp' or `tls': ejabberd_c2s:get_conn_type/1 has no other clause that fits.
-spec get_transport(socket()) -> tcp | tls.
get_transport(Socket) ->
    element(4, Socket).

%% mod_megaphone always passes `sock_peer_name', so xmpp_socket never asks.
-spec peername(socket()) -> {error, enotconn}.
peername(_Socket) ->
    {error, enotconn}.

-spec sockname(socket()) -> {error, enotconn}.
sockname(_Socket) ->
    {error, enotconn}.

%% In raw mode xmpp_socket applies the shaper itself. In parsed mode the node
%% reads the client at the shaper's rate, as ejabberd's own listener does.
%% The shaper is a `p1_shaper' state: `{state, MaxRate, BurstSize, _, _}'.
-spec change_shaper(socket(), none | tuple()) -> ok.
change_shaper({megaphone, Node, ConnId, _, _}, Shaper) ->
    Rate = case Shaper of
               {state, MaxRate, Burst, _, _} when is_integer(MaxRate), MaxRate > 0,
                                                  is_integer(Burst), Burst > 0 -> {MaxRate, Burst};
               _ -> none
           end,
    _ = megaphone:set_shaper(Node, ConnId, Rate, [noconnect]),
    ok;
change_shaper(_Socket, _Shaper) ->
    ok.

-spec controlling_process(socket(), pid()) -> ok.
controlling_process(_Socket, _Pid) ->
    ok.

%% In raw mode xmpp_socket resets its own parser after SASL. In parsed mode
%% the node restarts its parser; xmpp_stream_in calls this before it sends
%% `<success/>', and both requests travel in order on one distribution
%% connection, so the client's new stream header, which it sends only after
%% it has read `<success/>', always reaches the new parser.
-spec reset_stream(socket()) -> socket().
reset_stream({megaphone, Node, ConnId, _, _} = Socket) ->
    _ = megaphone:reset_stream(Node, ConnId, [noconnect]),
    Socket;
reset_stream(Socket) ->
    Socket.

%%====================================================================
%% Internal functions
%%====================================================================

-spec conn(socket()) -> {node(), megaphone:conn_id()}.
conn({megaphone, Node, ConnId, _}) -> {Node, ConnId};
conn({megaphone, Node, ConnId, _, _}) -> {Node, ConnId}.

%% The c2s ends its stream on `{error, closed}'.
-spec closed_if_down(ok | {error, nodedown}) -> ok | {error, closed}.
closed_if_down(ok) -> ok;
closed_if_down({error, nodedown}) -> {error, closed}.
