%%%----------------------------------------------------------------------
%%% File    : megaphone_xml_gen.erl
%%% Purpose : EUnit fixture: random XMPP-like streams, valid and invalid
%%%----------------------------------------------------------------------

%% @doc Seeded random XMPP-like streams for the XML differential test
%% (`megaphone_xml_diff_tests').
%%
%% `streams(Seed, Count)' returns `Count' streams, each `{Label, Bytes}',
%% and is a pure function of `Seed' (it uses its own `rand' state, never
%% the process's). About one in four is invalid; the label says how (e.g.
%% `<<"invalid:unbound-prefix">>'). Valid streams exercise what fxml's
%% namespace normalisation and expat's text handling do (see
%% Tests/corpus/xmpp-streams/FXML_RULES.md): header variants, default
%% namespace changes at every depth, prefixes declared on the header and
%% on stanzas, attribute and text escapes, line ends, CDATA, non-ASCII.
%%
%% Streams are kept to a few hundred bytes: the differential test parses
%% each one split at every byte.
-module(megaphone_xml_gen).

%% API.
-export([streams/2]).
-export([stream/1]).

-define(STREAMS_NS, <<"http://etherx.jabber.org/streams">>).
-define(DIALBACK_NS, <<"jabber:server:dialback">>).
-define(MAX_DEPTH, 4).

%% Namespaces children pick from: the client/server ones so that
%% "same as the parent" (xmlns removed) happens often.
-define(NAMESPACES, [<<"jabber:client">>, <<"jabber:server">>, <<"urn:xmpp:ping">>,
                     <<"urn:ietf:params:xml:ns:xmpp-bind">>, <<"urn:x:a">>, <<"urn:x:b">>,
                     ?STREAMS_NS, ?DIALBACK_NS]).

-type label() :: binary().

%%====================================================================
%% API
%%====================================================================

%% @doc `Count' streams from `Seed'; the same seed gives the same streams.
-spec streams(integer(), non_neg_integer()) -> [{label(), binary()}].
streams(Seed, Count) ->
    S0 = rand:seed_s(exsss, Seed),
    {Streams, _} = lists:mapfoldl(fun(_, S) -> stream(S) end, S0, lists:seq(1, Count)),
    Streams.

%% @doc One stream from the `rand' state `S'; returns it and the next state.
-spec stream(rand:state()) -> {{label(), binary()}, rand:state()}.
stream(S0) ->
    put(megaphone_xml_gen_rand, S0),
    try
        Stream = case uniform(4) of
                     1 -> invalid();
                     _ -> {<<"valid">>, iolist_to_binary(valid(<<>>, []))}
                 end,
        {Stream, get(megaphone_xml_gen_rand)}
    after
        erase(megaphone_xml_gen_rand)
    end.

%%====================================================================
%% Valid streams
%%====================================================================

%% A header, stanzas with whitespace between them, sometimes the end tag.
%% `Prolog' goes after the XML declaration (if any), `Inject' among the
%% stanzas (the invalid variants use them).
valid(Prolog, Inject) ->
    {Decl, Header, Scope} = header(),
    Stanzas = [[ws(), stanza(Scope)] || _ <- lists:seq(1, uniform(4) - 1)],
    Body = insert_at_random(Inject, Stanzas),
    [Decl, Prolog, Header, Body, ws(),
     case uniform(2) of 1 -> <<"</stream:stream>">>; 2 -> <<>> end,
     oneof([<<>>, <<"\n">>, <<" \r\n">>])].

%% The scope maps prefixes to URIs; `<<>>' is the default namespace.
header() ->
    Decl = oneof([<<>>, <<"<?xml version='1.0'?>">>, <<"<?xml version=\"1.0\"?>">>,
                  <<"<?xml version='1.0' encoding='UTF-8'?>">>,
                  <<"<?xml version=\"1.0\" encoding=\"utf-8\" standalone='yes'?>\n">>]),
    Default = oneof([<<"jabber:client">>, <<"jabber:client">>, <<"jabber:server">>, none]),
    Db = uniform(3) =:= 1,
    Extra = uniform(4) =:= 1,
    Ns = [{<<"xmlns:stream">>, ?STREAMS_NS}]
        ++ [{<<"xmlns">>, Default} || Default =/= none]
        ++ [{<<"xmlns:db">>, ?DIALBACK_NS} || Db]
        ++ [{<<"xmlns:x">>, <<"urn:x:a">>} || Extra],
    Attrs = [{<<"to">>, <<"example.com">>}, {<<"version">>, <<"1.0">>}]
        ++ [{<<"xml:lang">>, oneof([<<"en">>, <<"de-CH">>, <<>>])} || uniform(2) =:= 1]
        ++ [{<<"from">>, <<"juliet@example.com">>} || uniform(3) =:= 1],
    Scope = maps:from_list([{prefix_of(N), V} || {N, V} <- Ns]),
    {Decl, [<<"<stream:stream">>, [[attr_ws(), attr(N, V)] || {N, V} <- shuffle(Ns ++ Attrs)],
      oneof([<<>>, <<" ">>, <<"\n">>]), <<">">>],
     Scope}.

stanza(Scope) ->
    Name = oneof([<<"message">>, <<"presence">>, <<"iq">>, <<"message">>]
                 ++ [<<"stream:features">> || true]
                 ++ [<<"db:result">> || maps:is_key(<<"db">>, Scope)]
                 ++ [<<"x:item">> || maps:is_key(<<"x">>, Scope)]),
    Attrs = case Name of
                <<"message">> -> [{<<"to">>, <<"romeo@example.net">>}, {<<"type">>, <<"chat">>}];
                <<"iq">> -> [{<<"type">>, <<"get">>}, {<<"id">>, text_value()}];
                _ -> []
            end,
    element(Name, Scope, Attrs, 1).

%% An element whose namespace handling is picked at random: inherit, a new
%% default namespace (maybe the parent's), a prefix declared here, a prefix
%% in scope, a redefinition of a header prefix.
element(Name0, Scope0, Attrs0, Depth) ->
    {Name, Decls, Scope} = namespace(Name0, Scope0),
    Attrs = Attrs0 ++ extra_attrs(Scope),
    Open = [<<"<">>, Name, [[attr_ws(), attr(N, V)] || {N, V} <- shuffle(Decls ++ Attrs)],
            oneof([<<>>, <<>>, <<" ">>])],
    case children(Scope, Depth) of
        [] ->
            case uniform(2) of
                1 -> [Open, <<"/>">>];
                2 -> [Open, <<">">>, <<"</">>, Name, <<">">>]
            end;
        Children ->
            [Open, <<">">>, Children, <<"</">>, Name, oneof([<<>>, <<" ">>]), <<">">>]
    end.

namespace(Name, Scope) ->
    case uniform(8) of
        1 ->
            Ns = oneof(?NAMESPACES),
            {Name, [{<<"xmlns">>, Ns}], Scope#{<<>> => Ns}};
        2 ->
            P = oneof([<<"p">>, <<"q">>]),
            Ns = oneof(?NAMESPACES),
            {[P, <<":">>, local(Name)], [{<<"xmlns:", P/binary>>, Ns}], Scope#{P => Ns}};
        3 ->
            %% A prefix in scope (header or ancestor), used as is.
            case [P || P <- maps:keys(Scope), P =/= <<>>] of
                [] -> {Name, [], Scope};
                Ps -> P = oneof(Ps), {[P, <<":">>, local(Name)], [], Scope}
            end;
        4 ->
            %% Redeclare a header prefix, to the same or another URI.
            P = oneof([<<"stream">>, <<"db">>]),
            Ns = oneof([?STREAMS_NS, ?DIALBACK_NS, <<"urn:x:b">>]),
            Pre = case uniform(2) of 1 -> [P, <<":">>, local(Name)]; 2 -> local(Name) end,
            {Pre, [{<<"xmlns:", P/binary>>, Ns}], Scope#{P => Ns}};
        5 ->
            %% A prefixed element that also sets the default namespace.
            P = <<"p">>,
            Ns = oneof(?NAMESPACES),
            Def = oneof(?NAMESPACES),
            {[P, <<":">>, local(Name)], [{<<"xmlns:p">>, Ns}, {<<"xmlns">>, Def}],
             Scope#{P => Ns, <<>> => Def}};
        _ ->
            {Name, [], Scope}
    end.

extra_attrs(Scope) ->
    Plain = [{N, text_value()} || N <- [<<"a">>, <<"b">>, <<"c">>], uniform(4) =:= 1],
    Lang = [{<<"xml:lang">>, <<"en">>} || uniform(6) =:= 1],
    Prefixed = case [P || P <- maps:keys(Scope), P =/= <<>>, P =/= <<"stream">>] of
                   [] -> [];
                   Ps -> case uniform(5) of
                             1 -> [{<<(oneof(Ps))/binary, ":attr">>, text_value()}];
                             _ -> []
                         end
               end,
    Plain ++ Lang ++ Prefixed.

children(_Scope, Depth) when Depth >= ?MAX_DEPTH ->
    [text() || uniform(2) =:= 1];
children(Scope, Depth) ->
    [case uniform(3) of
         1 -> text();
         _ -> element(oneof([<<"body">>, <<"query">>, <<"item">>, <<"x">>, <<"bind">>,
                             <<"ping">>, <<"feature">>]),
                      Scope, [], Depth + 1)
     end
     || _ <- lists:seq(1, uniform(4) - 1)].

%%====================================================================
%% Invalid streams
%%====================================================================

%% A valid stream with one bad fragment spliced in among the stanzas (or,
%% for the prolog ones, between the XML declaration and the header; for
%% the trailer ones, after the end tag).
invalid() ->
    {Name, Where, Fragment} = oneof(invalid_fragments()),
    Bytes = case Where of
                stanza -> valid(<<>>, [Fragment]);
                inside -> valid(<<>>, [[<<"<message><body>x">>, Fragment, <<"y</body></message>">>]]);
                prolog -> valid(Fragment, []);
                trailer -> [valid(<<>>, []), <<"</stream:stream>">>, Fragment]
            end,
    {<<"invalid:", Name/binary>>, iolist_to_binary(Bytes)}.

invalid_fragments() ->
    [{<<"mismatched-tag">>, stanza, <<"<message><body>a</message></body>">>},
     {<<"control-char">>, inside, <<1>>},
     {<<"nul-byte">>, inside, <<0>>},
     {<<"unbound-prefix">>, stanza, <<"<zz:message/>">>},
     {<<"unbound-attr-prefix">>, stanza, <<"<message zz:a='1'/>">>},
     {<<"duplicate-attribute">>, stanza, <<"<message to='a' to='b'/>">>},
     {<<"duplicate-expanded-attribute">>, stanza,
      <<"<message xmlns:p='urn:p' xmlns:q='urn:p' p:a='1' q:a='2'/>">>},
     {<<"lt-in-attribute">>, stanza, <<"<message to='a<b'/>">>},
     {<<"bad-utf8-ff">>, inside, <<16#FF>>},
     {<<"bad-utf8-overlong">>, inside, <<16#C0, 16#AF>>},
     {<<"bad-utf8-surrogate">>, inside, <<16#ED, 16#A0, 16#80>>},
     {<<"truncated-utf8">>, inside, <<16#E6, 16#97>>},
     {<<"truncated-utf8-in-attribute">>, stanza, <<"<message to='", 16#F0, 16#9F, "'/>">>},
     {<<"undefined-entity">>, inside, <<"&nbsp;">>},
     {<<"undefined-entity-in-attribute">>, stanza, <<"<message to='&eacute;'/>">>},
     {<<"bad-char-ref">>, inside, <<"&#0;">>},
     {<<"surrogate-char-ref">>, inside, <<"&#xD800;">>},
     {<<"cdata-end-in-text">>, inside, <<"]]>">>},
     {<<"comment">>, stanza, <<"<!-- a comment -->">>},
     {<<"comment-in-text">>, inside, <<"<!--c-->">>},
     {<<"comment-in-prolog">>, prolog, <<"<!-- before -->">>},
     {<<"pi">>, stanza, <<"<?foo bar?>">>},
     {<<"pi-in-text">>, inside, <<"<?foo?>">>},
     {<<"pi-in-prolog">>, prolog, <<"<?foo bar?>">>},
     {<<"doctype-in-prolog">>, prolog, <<"<!DOCTYPE stream>">>},
     {<<"doctype-in-stream">>, stanza, <<"<!DOCTYPE stream>">>},
     {<<"xml-decl-in-stream">>, stanza, <<"<?xml version='1.0'?>">>},
     {<<"text-before-root">>, prolog, <<"hello">>},
     {<<"junk-after-root">>, trailer, <<"<message/>">>},
     {<<"undeclare-prefix">>, stanza, <<"<message xmlns:p=''/>">>},
     {<<"bad-name">>, stanza, <<"<1message/>">>},
     {<<"unquoted-attribute">>, stanza, <<"<message to=a/>">>}].

%%====================================================================
%% Text and attribute values
%%====================================================================

text() ->
    [text_piece() || _ <- lists:seq(1, uniform(4))].

text_piece() ->
    case uniform(12) of
        1 -> oneof([<<"&amp;">>, <<"&lt;">>, <<"&gt;">>, <<"&quot;">>, <<"&apos;">>]);
        2 -> oneof([<<"&#x41;">>, <<"&#233;">>, <<"&#x1F600;">>, <<"&#10;">>, <<"&#13;">>]);
        3 -> oneof([<<"\t">>, <<"\n">>, <<"\r">>, <<"\r\n">>, <<"  ">>]);
        4 -> oneof([<<"<![CDATA[<b>&amp;</b>]]>">>, <<"<![CDATA[]]>">>, <<"<![CDATA[\r\n]]>">>]);
        5 -> oneof([<<"caf\xC3\xA9">>, <<"\xE6\x97\xA5\xE6\x9C\xAC">>, <<"\xF0\x9F\x98\x80">>]);
        6 -> <<">">>;
        _ -> oneof([<<"hello">>, <<"wherefore art thou">>, <<"x">>, <<"42">>])
    end.

%% Attribute values: escapes, char refs, literal whitespace that expat
%% turns into spaces, non-ASCII.
text_value() ->
    iolist_to_binary([value_piece() || _ <- lists:seq(1, uniform(3))]).

value_piece() ->
    case uniform(8) of
        1 -> oneof([<<"&amp;">>, <<"&lt;">>, <<"&gt;">>, <<"&quot;">>, <<"&apos;">>]);
        2 -> oneof([<<"&#x41;">>, <<"&#233;">>, <<"&#x1F600;">>, <<"&#9;">>, <<"&#13;">>]);
        3 -> oneof([<<"\t">>, <<"\n">>, <<"\r">>, <<"\r\n">>]);
        4 -> oneof([<<"\xC3\xA9">>, <<"\xF0\x9F\x98\x80">>]);
        _ -> oneof([<<"v">>, <<"id-7">>, <<"a b">>, <<"x@y/z">>])
    end.

%% A value in either quote; the other quote may appear inside literally,
%% but not in namespace declarations: a URI must stay equal to the one it
%% repeats, or fxml's "same namespace as the parent" rule never fires.
attr(<<"xmlns", _/binary>> = Name, Value) ->
    Q = oneof([<<"'">>, <<"\"">>]),
    [Name, eq(), Q, Value, Q];
attr(Name, Value) ->
    case uniform(2) of
        1 -> [Name, eq(), <<"'">>, Value, oneof([<<>>, <<"\"">>]), <<"'">>];
        2 -> [Name, eq(), <<"\"">>, Value, oneof([<<>>, <<"'">>]), <<"\"">>]
    end.

eq() -> oneof([<<"=">>, <<"=">>, <<" = ">>, <<"\n=">>]).

attr_ws() -> oneof([<<" ">>, <<" ">>, <<"  ">>, <<"\n">>, <<"\t">>, <<"\r\n">>]).

%% Whitespace between stanzas (stream-level character data).
ws() -> oneof([<<>>, <<>>, <<" ">>, <<"\n">>, <<"\r\n">>, <<"\t \n">>, <<"\r">>]).

%%====================================================================
%% Internal functions
%%====================================================================

prefix_of(<<"xmlns">>) -> <<>>;
prefix_of(<<"xmlns:", P/binary>>) -> P.

local(Name) ->
    case binary:split(Name, <<":">>) of
        [_, Local] -> Local;
        [Local] -> Local
    end.

insert_at_random([], List) ->
    List;
insert_at_random(Items, List) ->
    {A, B} = lists:split(uniform(length(List) + 1) - 1, List),
    A ++ Items ++ B.

shuffle(List) ->
    [X || {_, X} <- lists:sort([{uniform(1 bsl 30), X} || X <- List])].

oneof(List) ->
    lists:nth(uniform(length(List)), List).

uniform(N) ->
    {X, S} = rand:uniform_s(N, get(megaphone_xml_gen_rand)),
    put(megaphone_xml_gen_rand, S),
    X.
