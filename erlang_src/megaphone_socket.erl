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
%% The socket term is `{megaphone, Node, ConnId, tcp | tls}'; the c2s never
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

-export_type([socket/0]).

-type socket() :: {megaphone, node(), megaphone:conn_id(), tcp | tls}.

%% Raw mode: the c2s process is its own owner (see the module doc).
-spec get_owner(socket()) -> pid().
get_owner({megaphone, _Node, _ConnId, _Transport}) ->
    self().

%% Queues Data for the client. `{error, closed}' when the node is not
%% connected: the c2s then ends the stream.
-spec send(socket(), iodata()) -> ok | {error, closed}.
send({megaphone, Node, ConnId, _}, Data) ->
    closed_if_down(megaphone:send_data(Node, ConnId, Data, [noconnect])).

%% Only reached in parsed mode, which Megaphone does not use; serialised
%% here so that the behaviour is complete.
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
-spec setopts(socket(), [{active, once | boolean()} | term()]) -> ok | {error, closed}.
setopts({megaphone, Node, ConnId, _}, Opts) ->
    case lists:member({active, once}, Opts) of
        true -> closed_if_down(megaphone:get_data(Node, ConnId, [noconnect]));
        false -> ok
    end.

%% Flushes what is queued, then closes. The c2s may call it more than once
%% (close, release, terminate); the node ignores a close for a connection it
%% no longer has.
-spec close(socket()) -> ok.
close({megaphone, Node, ConnId, _}) ->
    _ = megaphone:close(Node, ConnId, [noconnect]),
    ok.

%% `tcp' or `tls': ejabberd_c2s:get_conn_type/1 has no other clause that fits.
-spec get_transport(socket()) -> tcp | tls.
get_transport({megaphone, _Node, _ConnId, Transport}) ->
    Transport.

%% mod_megaphone always passes `sock_peer_name', so xmpp_socket never asks.
-spec peername(socket()) -> {error, enotconn}.
peername(_Socket) ->
    {error, enotconn}.

-spec sockname(socket()) -> {error, enotconn}.
sockname(_Socket) ->
    {error, enotconn}.

%% In raw mode xmpp_socket applies the shaper itself.
-spec change_shaper(socket(), term()) -> ok.
change_shaper(_Socket, _Shaper) ->
    ok.

-spec controlling_process(socket(), pid()) -> ok.
controlling_process(_Socket, _Pid) ->
    ok.

%% In raw mode xmpp_socket resets its own parser after SASL.
-spec reset_stream(socket()) -> socket().
reset_stream(Socket) ->
    Socket.

%%====================================================================
%% Internal functions
%%====================================================================

%% The c2s ends its stream on `{error, closed}'.
-spec closed_if_down(ok | {error, nodedown}) -> ok | {error, closed}.
closed_if_down(ok) -> ok;
closed_if_down({error, nodedown}) -> {error, closed}.
