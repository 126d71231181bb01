from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "messages", "raw", "method", "max_new_tokens", "sampling", "num_draft_tokens", "adaptive_draft", "ignore_eos", "prompt_token_ids", "num_branches", "ouroboros", "beam", "tree_budget", "head_tree")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_DRAFT_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_BRANCHES_FIELD_NUMBER: _ClassVar[int]
    OUROBOROS_FIELD_NUMBER: _ClassVar[int]
    BEAM_FIELD_NUMBER: _ClassVar[int]
    TREE_BUDGET_FIELD_NUMBER: _ClassVar[int]
    HEAD_TREE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    raw: bool
    method: str
    max_new_tokens: int
    sampling: _common_pb2.SamplingParams
    num_draft_tokens: int
    adaptive_draft: bool
    ignore_eos: bool
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_branches: int
    ouroboros: OuroborosOptions
    beam: _common_pb2.BeamParams
    tree_budget: str
    head_tree: str
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., raw: _Optional[bool] = ..., method: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., num_draft_tokens: _Optional[int] = ..., adaptive_draft: _Optional[bool] = ..., ignore_eos: _Optional[bool] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., num_branches: _Optional[int] = ..., ouroboros: _Optional[_Union[OuroborosOptions, _Mapping]] = ..., beam: _Optional[_Union[_common_pb2.BeamParams, _Mapping]] = ..., tree_budget: _Optional[str] = ..., head_tree: _Optional[str] = ...) -> None: ...

class OuroborosOptions(_message.Message):
    __slots__ = ("phrase_top_k", "phrase_length", "no_lookahead", "no_phrase_extension", "no_verification_phrases", "no_history_phrases")
    PHRASE_TOP_K_FIELD_NUMBER: _ClassVar[int]
    PHRASE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NO_LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    NO_PHRASE_EXTENSION_FIELD_NUMBER: _ClassVar[int]
    NO_VERIFICATION_PHRASES_FIELD_NUMBER: _ClassVar[int]
    NO_HISTORY_PHRASES_FIELD_NUMBER: _ClassVar[int]
    phrase_top_k: int
    phrase_length: int
    no_lookahead: bool
    no_phrase_extension: bool
    no_verification_phrases: bool
    no_history_phrases: bool
    def __init__(self, phrase_top_k: _Optional[int] = ..., phrase_length: _Optional[int] = ..., no_lookahead: _Optional[bool] = ..., no_phrase_extension: _Optional[bool] = ..., no_verification_phrases: _Optional[bool] = ..., no_history_phrases: _Optional[bool] = ...) -> None: ...

class PhaseTimes(_message.Message):
    __slots__ = ("draft_s", "verify_s", "orchestrate_s", "network_s", "prefill_s")
    DRAFT_S_FIELD_NUMBER: _ClassVar[int]
    VERIFY_S_FIELD_NUMBER: _ClassVar[int]
    ORCHESTRATE_S_FIELD_NUMBER: _ClassVar[int]
    NETWORK_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_S_FIELD_NUMBER: _ClassVar[int]
    draft_s: float
    verify_s: float
    orchestrate_s: float
    network_s: float
    prefill_s: float
    def __init__(self, draft_s: _Optional[float] = ..., verify_s: _Optional[float] = ..., orchestrate_s: _Optional[float] = ..., network_s: _Optional[float] = ..., prefill_s: _Optional[float] = ...) -> None: ...

class GenerationStats(_message.Message):
    __slots__ = ("prompt_tokens", "new_tokens", "target_steps", "draft_tokens", "accepted_tokens", "tau", "acceptance_rate", "wall_s", "tokens_per_s", "phases", "accepted_length_histogram", "finish_reason", "drafter_switches", "draft_timeouts", "target_rebuilds")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TARGET_STEPS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_LENGTH_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_REBUILDS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    new_tokens: int
    target_steps: int
    draft_tokens: int
    accepted_tokens: int
    tau: float
    acceptance_rate: float
    wall_s: float
    tokens_per_s: float
    phases: PhaseTimes
    accepted_length_histogram: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    drafter_switches: int
    draft_timeouts: int
    target_rebuilds: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., new_tokens: _Optional[int] = ..., target_steps: _Optional[int] = ..., draft_tokens: _Optional[int] = ..., accepted_tokens: _Optional[int] = ..., tau: _Optional[float] = ..., acceptance_rate: _Optional[float] = ..., wall_s: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., phases: _Optional[_Union[PhaseTimes, _Mapping]] = ..., accepted_length_histogram: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[str] = ..., drafter_switches: _Optional[int] = ..., draft_timeouts: _Optional[int] = ..., target_rebuilds: _Optional[int] = ...) -> None: ...

class Beam(_message.Message):
    __slots__ = ("text", "token_ids", "score", "logprob", "finished")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    score: float
    logprob: float
    finished: bool
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., score: _Optional[float] = ..., logprob: _Optional[float] = ..., finished: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "token_ids", "method", "stats", "session_id", "beams", "peak_kv_bytes")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BEAMS_FIELD_NUMBER: _ClassVar[int]
    PEAK_KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    method: str
    stats: GenerationStats
    session_id: str
    beams: _containers.RepeatedCompositeFieldContainer[Beam]
    peak_kv_bytes: int
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., method: _Optional[str] = ..., stats: _Optional[_Union[GenerationStats, _Mapping]] = ..., session_id: _Optional[str] = ..., beams: _Optional[_Iterable[_Union[Beam, _Mapping]]] = ..., peak_kv_bytes: _Optional[int] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("text", "token_ids", "stats", "done", "method", "session_id", "beams", "peak_kv_bytes")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BEAMS_FIELD_NUMBER: _ClassVar[int]
    PEAK_KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    stats: GenerationStats
    done: bool
    method: str
    session_id: str
    beams: _containers.RepeatedCompositeFieldContainer[Beam]
    peak_kv_bytes: int
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., stats: _Optional[_Union[GenerationStats, _Mapping]] = ..., done: _Optional[bool] = ..., method: _Optional[str] = ..., session_id: _Optional[str] = ..., beams: _Optional[_Iterable[_Union[Beam, _Mapping]]] = ..., peak_kv_bytes: _Optional[int] = ...) -> None: ...

class OrchestratorInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OrchestratorInfo(_message.Message):
    __slots__ = ("target", "draft", "methods", "max_new_tokens")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    target: _common_pb2.VocabInfo
    draft: _common_pb2.VocabInfo
    methods: _containers.RepeatedScalarFieldContainer[str]
    max_new_tokens: int
    def __init__(self, target: _Optional[_Union[_common_pb2.VocabInfo, _Mapping]] = ..., draft: _Optional[_Union[_common_pb2.VocabInfo, _Mapping]] = ..., methods: _Optional[_Iterable[str]] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...
