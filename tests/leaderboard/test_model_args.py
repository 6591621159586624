"""The leaderboard reads a results file's ``model_args`` exactly as lmms-eval 0.7.3 handed it to the model."""

from __future__ import annotations

import pytest
from lmms_eval.utils import simple_parse_args_string

from lrs_plugin.leaderboard import LeaderboardError
from lrs_plugin.leaderboard.model_args import model_kwargs, parse_model_args_string

TRICKY = [
    "",
    "   ",
    "pretrained=/c/m,reducer=c2f,keep_ratio=0.25",
    "pretrained=/c/m,focus_llm_layer_list=[2,3],focus_layer=2",  # the list stays one text value "[2,3]"
    "a=[[1,2],[3,4]],b={'x': [1, 2], 'y': 3},c=2",
    'a={"k":1,"l":2},b="p,q",c=\'r,s\',d=x',
    'a="it\\"s,here",b=1',
    "a=1,,b=2,",
    "flag=TRUE,other=False,n=None,m=null",
    "i=144,f=0.25,neg=-3,exp=1e-3,inf=inf,nan=nan,hexish=0x10",
    "sp = 7 ,pad=  x  ",  # keys and values are not stripped around '='
    "url=http://h/p?a=b=c",  # split at the first '='
    "unbalanced=[1,2,x=3",
    "close=]1,y=2",
]


@pytest.mark.parametrize("text", TRICKY)
def test_parsing_matches_lmms_eval(text):
    ours = parse_model_args_string(text)
    theirs = simple_parse_args_string(text)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert type(ours[key]) is type(value) and (ours[key] == value or value != value), key  # nan != nan


def test_a_list_value_keeps_its_commas():
    assert parse_model_args_string("focus_llm_layer_list=[2,3],x=1") == {"focus_llm_layer_list": "[2,3]", "x": 1}


@pytest.mark.parametrize("text", ["novalue", "a=1,b", "=x"])
def test_parts_that_are_not_key_value_are_refused(text):
    with pytest.raises(LeaderboardError, match="is not key=value"):
        parse_model_args_string(text)


def test_command_line_device_and_batch_size_reach_the_model():
    config = {"model_args": "pretrained=/c/m", "device": "cuda:0", "batch_size": 1}
    assert model_kwargs(config) == {"pretrained": "/c/m", "device": "cuda:0", "batch_size": 1}
    with pytest.raises(LeaderboardError, match="device given twice"):
        model_kwargs({"model_args": "pretrained=/c/m,device=cpu", "device": "cuda:0"})
