from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DraftInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DraftInfo(_message.Message):
    __slots__ = ("vocab", "drafters", "device", "max_sessions", "active_sessions", "phrase_store")
    VOCAB_FIELD_NUMBER: _ClassVar[int]
    DRAFTERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PHRASE_STORE_FIELD_NUMBER: _ClassVar[int]
    vocab: _common_pb2.VocabInfo
    drafters: _containers.RepeatedScalarFieldContainer[str]
    device: str
    max_sessions: int
    active_sessions: int
    phrase_store: str
    def __init__(self, vocab: _Optional[_Union[_common_pb2.VocabInfo, _Mapping]] = ..., drafters: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., max_sessions: _Optional[int] = ..., active_sessions: _Optional[int] = ..., phrase_store: _Optional[str] = ...) -> None: ...

class DraftOptions(_message.Message):
    __slots__ = ("num_tokens", "adaptive", "max_ngram", "min_ngram", "num_branches", "draft_top_k", "phrase_namespace", "phrase_top_k", "phrase_length", "no_lookahead", "no_phrase_extension", "no_verification_phrases", "no_history_phrases", "head_tree")
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_NGRAM_FIELD_NUMBER: _ClassVar[int]
    MIN_NGRAM_FIELD_NUMBER: _ClassVar[int]
    NUM_BRANCHES_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    PHRASE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PHRASE_TOP_K_FIELD_NUMBER: _ClassVar[int]
    PHRASE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NO_LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    NO_PHRASE_EXTENSION_FIELD_NUMBER: _ClassVar[int]
    NO_VERIFICATION_PHRASES_FIELD_NUMBER: _ClassVar[int]
    NO_HISTORY_PHRASES_FIELD_NUMBER: _ClassVar[int]
    HEAD_TREE_FIELD_NUMBER: _ClassVar[int]
    num_tokens: int
    adaptive: bool
    max_ngram: int
    min_ngram: int
    num_branches: int
    draft_top_k: int
    phrase_namespace: str
    phrase_top_k: int
    phrase_length: int
    no_lookahead: bool
    no_phrase_extension: bool
    no_verification_phrases: bool
    no_history_phrases: bool
    head_tree: str
    def __init__(self, num_tokens: _Optional[int] = ..., adaptive: _Optional[bool] = ..., max_ngram: _Optional[int] = ..., min_ngram: _Optional[int] = ..., num_branches: _Optional[int] = ..., draft_top_k: _Optional[int] = ..., phrase_namespace: _Optional[str] = ..., phrase_top_k: _Optional[int] = ..., phrase_length: _Optional[int] = ..., no_lookahead: _Optional[bool] = ..., no_phrase_extension: _Optional[bool] = ..., no_verification_phrases: _Optional[bool] = ..., no_history_phrases: _Optional[bool] = ..., head_tree: _Optional[str] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("session_id", "drafter", "offset", "tokens", "max_nodes", "options", "sampling", "has_feedback", "feedback_num_draft", "feedback_num_accepted", "feedback_target_tokens", "hidden_state", "max_depth")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    HAS_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_NUM_DRAFT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    drafter: str
    offset: int
    tokens: _containers.RepeatedScalarFieldContainer[int]
    max_nodes: int
    options: DraftOptions
    sampling: _common_pb2.SamplingParams
    has_feedback: bool
    feedback_num_draft: int
    feedback_num_accepted: int
    feedback_target_tokens: _containers.RepeatedScalarFieldContainer[int]
    hidden_state: bytes
    max_depth: int
    def __init__(self, session_id: _Optional[str] = ..., drafter: _Optional[str] = ..., offset: _Optional[int] = ..., tokens: _Optional[_Iterable[int]] = ..., max_nodes: _Optional[int] = ..., options: _Optional[_Union[DraftOptions, _Mapping]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., has_feedback: _Optional[bool] = ..., feedback_num_draft: _Optional[int] = ..., feedback_num_accepted: _Optional[int] = ..., feedback_target_tokens: _Optional[_Iterable[int]] = ..., hidden_state: _Optional[bytes] = ..., max_depth: _Optional[int] = ...) -> None: ...

class ProposeResponse(_message.Message):
    __slots__ = ("tree", "compute_ms", "context_len")
    TREE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LEN_FIELD_NUMBER: _ClassVar[int]
    tree: _common_pb2.DraftTree
    compute_ms: float
    context_len: int
    def __init__(self, tree: _Optional[_Union[_common_pb2.DraftTree, _Mapping]] = ..., compute_ms: _Optional[float] = ..., context_len: _Optional[int] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("session_id", "num_draft", "num_accepted", "target_tokens")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFT_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    num_draft: int
    num_accepted: int
    target_tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., num_draft: _Optional[int] = ..., num_accepted: _Optional[int] = ..., target_tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class ObserveResponse(_message.Message):
    __slots__ = ("next_num_tokens",)
    NEXT_NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    next_num_tokens: int
    def __init__(self, next_num_tokens: _Optional[int] = ...) -> None: ...

class DraftReleaseRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DraftReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class TokenList(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class ProposeBeamsRequest(_message.Message):
    __slots__ = ("session_id", "contexts", "updates", "beam_scores", "depth", "width", "max_nodes", "sampling", "draft_top_k", "eos_token_ids", "drafter", "hidden_states")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    BEAM_SCORES_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    contexts: _containers.RepeatedCompositeFieldContainer[TokenList]
    updates: _containers.RepeatedCompositeFieldContainer[_common_pb2.BeamUpdate]
    beam_scores: _containers.RepeatedScalarFieldContainer[float]
    depth: int
    width: int
    max_nodes: int
    sampling: _common_pb2.SamplingParams
    draft_top_k: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    drafter: str
    hidden_states: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, session_id: _Optional[str] = ..., contexts: _Optional[_Iterable[_Union[TokenList, _Mapping]]] = ..., updates: _Optional[_Iterable[_Union[_common_pb2.BeamUpdate, _Mapping]]] = ..., beam_scores: _Optional[_Iterable[float]] = ..., depth: _Optional[int] = ..., width: _Optional[int] = ..., max_nodes: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., draft_top_k: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., drafter: _Optional[str] = ..., hidden_states: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ProposeBeamsResponse(_message.Message):
    __slots__ = ("forest", "compute_s")
    FOREST_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    forest: _common_pb2.BeamForest
    compute_s: float
    def __init__(self, forest: _Optional[_Union[_common_pb2.BeamForest, _Mapping]] = ..., compute_s: _Optional[float] = ...) -> None: ...
