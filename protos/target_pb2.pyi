from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TargetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TargetInfo(_message.Message):
    __slots__ = ("vocab", "device", "dtype", "max_sessions", "max_tree_nodes", "max_context", "active_sessions", "max_draft_top_k", "hidden_size", "draft_head", "colocated_drafters")
    VOCAB_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_TREE_NODES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAFT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_HEAD_FIELD_NUMBER: _ClassVar[int]
    COLOCATED_DRAFTERS_FIELD_NUMBER: _ClassVar[int]
    vocab: _common_pb2.VocabInfo
    device: str
    dtype: str
    max_sessions: int
    max_tree_nodes: int
    max_context: int
    active_sessions: int
    max_draft_top_k: int
    hidden_size: int
    draft_head: bool
    colocated_drafters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vocab: _Optional[_Union[_common_pb2.VocabInfo, _Mapping]] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., max_sessions: _Optional[int] = ..., max_tree_nodes: _Optional[int] = ..., max_context: _Optional[int] = ..., active_sessions: _Optional[int] = ..., max_draft_top_k: _Optional[int] = ..., hidden_size: _Optional[int] = ..., draft_head: _Optional[bool] = ..., colocated_drafters: _Optional[_Iterable[str]] = ...) -> None: ...

class ColocatedDraft(_message.Message):
    __slots__ = ("width", "length", "max_nodes", "top_k", "drafter", "max_ngram", "min_ngram", "tree")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_FIELD_NUMBER: _ClassVar[int]
    MAX_NGRAM_FIELD_NUMBER: _ClassVar[int]
    MIN_NGRAM_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    width: int
    length: int
    max_nodes: int
    top_k: int
    drafter: str
    max_ngram: int
    min_ngram: int
    tree: str
    def __init__(self, width: _Optional[int] = ..., length: _Optional[int] = ..., max_nodes: _Optional[int] = ..., top_k: _Optional[int] = ..., drafter: _Optional[str] = ..., max_ngram: _Optional[int] = ..., min_ngram: _Optional[int] = ..., tree: _Optional[str] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("session_id", "prompt_tokens", "sampling", "return_hidden_state", "colocated_draft")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    COLOCATED_DRAFT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    prompt_tokens: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    return_hidden_state: bool
    colocated_draft: ColocatedDraft
    def __init__(self, session_id: _Optional[str] = ..., prompt_tokens: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., return_hidden_state: _Optional[bool] = ..., colocated_draft: _Optional[_Union[ColocatedDraft, _Mapping]] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("context_len", "compute_ms", "evicted_sessions", "hidden_state", "next_tree")
    CONTEXT_LEN_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_TREE_FIELD_NUMBER: _ClassVar[int]
    context_len: int
    compute_ms: float
    evicted_sessions: int
    hidden_state: bytes
    next_tree: _common_pb2.DraftTree
    def __init__(self, context_len: _Optional[int] = ..., compute_ms: _Optional[float] = ..., evicted_sessions: _Optional[int] = ..., hidden_state: _Optional[bytes] = ..., next_tree: _Optional[_Union[_common_pb2.DraftTree, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("session_id", "tree", "return_target_tokens", "return_hidden_state", "colocated_draft")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    RETURN_TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    COLOCATED_DRAFT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tree: _common_pb2.DraftTree
    return_target_tokens: bool
    return_hidden_state: bool
    colocated_draft: ColocatedDraft
    def __init__(self, session_id: _Optional[str] = ..., tree: _Optional[_Union[_common_pb2.DraftTree, _Mapping]] = ..., return_target_tokens: _Optional[bool] = ..., return_hidden_state: _Optional[bool] = ..., colocated_draft: _Optional[_Union[ColocatedDraft, _Mapping]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("accepted_tokens", "accepted_nodes", "next_token", "bonus", "context_len", "compute_ms", "target_tokens", "hidden_state", "next_tree")
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BONUS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LEN_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_TREE_FIELD_NUMBER: _ClassVar[int]
    accepted_tokens: _containers.RepeatedScalarFieldContainer[int]
    accepted_nodes: _containers.RepeatedScalarFieldContainer[int]
    next_token: int
    bonus: bool
    context_len: int
    compute_ms: float
    target_tokens: _containers.RepeatedScalarFieldContainer[int]
    hidden_state: bytes
    next_tree: _common_pb2.DraftTree
    def __init__(self, accepted_tokens: _Optional[_Iterable[int]] = ..., accepted_nodes: _Optional[_Iterable[int]] = ..., next_token: _Optional[int] = ..., bonus: _Optional[bool] = ..., context_len: _Optional[int] = ..., compute_ms: _Optional[float] = ..., target_tokens: _Optional[_Iterable[int]] = ..., hidden_state: _Optional[bytes] = ..., next_tree: _Optional[_Union[_common_pb2.DraftTree, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class BeamVerifyRequest(_message.Message):
    __slots__ = ("session_id", "forest", "params", "eos_token_ids", "return_hidden_states", "tokens_left")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FOREST_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_LEFT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    forest: _common_pb2.BeamForest
    params: _common_pb2.BeamParams
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    return_hidden_states: bool
    tokens_left: int
    def __init__(self, session_id: _Optional[str] = ..., forest: _Optional[_Union[_common_pb2.BeamForest, _Mapping]] = ..., params: _Optional[_Union[_common_pb2.BeamParams, _Mapping]] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., return_hidden_states: _Optional[bool] = ..., tokens_left: _Optional[int] = ...) -> None: ...

class BeamVerifyResponse(_message.Message):
    __slots__ = ("beams", "finished", "widths", "accepted", "drafted", "compute_s", "kv_bytes", "hidden_states")
    BEAMS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    WIDTHS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    beams: _containers.RepeatedCompositeFieldContainer[_common_pb2.BeamUpdate]
    finished: _containers.RepeatedCompositeFieldContainer[_common_pb2.BeamUpdate]
    widths: _containers.RepeatedScalarFieldContainer[int]
    accepted: int
    drafted: int
    compute_s: float
    kv_bytes: int
    hidden_states: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, beams: _Optional[_Iterable[_Union[_common_pb2.BeamUpdate, _Mapping]]] = ..., finished: _Optional[_Iterable[_Union[_common_pb2.BeamUpdate, _Mapping]]] = ..., widths: _Optional[_Iterable[int]] = ..., accepted: _Optional[int] = ..., drafted: _Optional[int] = ..., compute_s: _Optional[float] = ..., kv_bytes: _Optional[int] = ..., hidden_states: _Optional[_Iterable[bytes]] = ...) -> None: ...
