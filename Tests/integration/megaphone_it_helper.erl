%%% The long-lived hidden Erlang node the integration harness (harness/erl_helper.py) talks to.
%%%
%%% One request per line on stdin, one reply per line on stdout:
%%%   request: "<Mode> <Node> <TimeoutMs> <Base64(Erlang expressions, ending in '.')>"
%%%            Mode = local   evaluate here (e.g. megaphone:stats/2 against a Swift node)
%%%                 | rpc     evaluate inside Node (erl_eval runs there: no code shipped)
%%%   reply:   "@@mpit ok <Base64(term_to_binary(Value))>"
%%%          | "@@mpit error <Base64(term_to_binary({Class, Reason, TextBinary}))>"
%%% Anything else the VM prints (warnings) does not start with "@@mpit " and is skipped.
%%% EOF on stdin halts the node, so it never outlives the harness.
-module(megaphone_it_helper).
-export([main/0]).

main() ->
    loop().

loop() ->
    case io:get_line('') of
        eof -> halt(0);
        {error, _} -> halt(0);
        Line ->
            Reply = handle(string:trim(Line)),
            io:put_chars(["@@mpit ", Reply, $\n]),
            loop()
    end.

handle(Line) ->
    try
        [Mode, NodeS, TimeoutS, B64] = string:split(Line, " ", all),
        Src = unicode:characters_to_list(base64:decode(B64)),
        {ok, Toks, _} = erl_scan:string(Src),
        {ok, Exprs} = erl_parse:parse_exprs(Toks),
        Timeout = list_to_integer(TimeoutS),
        Value = case Mode of
                    "local" ->
                        {value, V, _} = erl_eval:exprs(Exprs, []),
                        V;
                    "rpc" ->
                        Node = list_to_atom(NodeS),
                        case rpc:call(Node, erl_eval, exprs, [Exprs, []], Timeout) of
                            {value, V, _} -> V;
                            {badrpc, R} -> throw({badrpc, R})
                        end
                end,
        ["ok ", base64:encode(term_to_binary(Value))]
    catch
        Class:Reason:Stack ->
            Text = io_lib:format("~tP~n  at ~tP", [{Class, Reason}, 40, Stack, 20]),
            ["error ", base64:encode(term_to_binary({Class, Reason, unicode:characters_to_binary(Text)}))]
    end.
