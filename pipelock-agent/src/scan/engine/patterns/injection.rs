//! Prompt-injection rules for responses. They run on text normalised by
//! `scan::text::normalize` (NFKC, invisibles removed, homoglyphs and leetspeak
//! folded, whitespace runs collapsed), so expressions only need ASCII
//! spelling plus the CJK / accented literals of the multilingual rules.
//! Digits are leet-folded by the normaliser (`0→o 1→i 3→e 4→a 5→s 7→t`),
//! so literals containing them are written folded (`base(?:64|6a)`).
use super::{Confidence as C, Rule, RuleClass::Injection, Severity as S, rule};

/// The injection rule table.
pub static INJECTION_RULES: &[Rule] = &[
    rule(
        "inj.instruction_override",
        "Instruction override (ignore previous instructions)",
        Injection,
        S::High,
        C::High,
        r"\b(?:ignore|disregard|forget|abandon|override|bypass|skip)\s+(?:(?:all|any|the|your|of|my|these|those)\s+)*(?:previous|prior|above|earlier|preceding|original|system|initial)\s+(?:\w+\s+)?(?:instructions?|prompts?|rules|context|directives?|constraints|policies|guardrails|guidelines|commands)\b",
    )
    .quotable(),
    rule(
        "inj.system_override",
        "System-role line override",
        Injection,
        S::Medium,
        C::Medium,
        r"^[ \t]*system\s*:\s*(?:you|ignore|new|override|from)\b",
    )
    .multiline(),
    rule(
        "inj.role_override",
        "Role override to an unrestricted persona",
        Injection,
        S::High,
        C::High,
        r"\byou\s+are\s+(?:now\s+)?(?:an?\s+)?(?:(?-i:DAN)\b|evil\b|unrestricted\b|jailbroken\b|unfiltered\b|uncensored\b|no\s+longer\s+(?:bound|restricted))",
    )
    .quotable(),
    rule(
        "inj.new_instructions",
        "New/updated instructions announcement",
        Injection,
        S::Low,
        C::Low,
        r"\b(?:new|updated|revised)\s+(?:system\s+)?(?:instructions|directives|prompt)\s*:",
    )
    .quotable(),
    rule(
        "inj.jailbreak_dan",
        "DAN jailbreak persona",
        Injection,
        S::High,
        C::Medium,
        r"\bDAN\b[^\n]{0,40}\b(?:mode|jailbreak|do\s+anything\s+now)\b|do\s+anything\s+now",
    )
    .quotable()
    .case_sensitive(),
    rule(
        "inj.jailbreak_mode",
        "Jailbreak mode switch",
        Injection,
        S::High,
        C::High,
        r"\b(?:enable|enter|activate|switch\s+to|you\s+are\s+in|now\s+in)\s+(?:\w+\s+)?(?:developer|sudo|god|unrestricted|jailbreak|jailbroken)\s+mode\b",
    )
    .quotable(),
    rule(
        "inj.hidden_instruction",
        "Hidden-instruction marker",
        Injection,
        S::High,
        C::High,
        r"\b(?:do\s+not|don't|never)\s+(?:reveal|tell|show|display|mention)\s+(?:this|these|it)\s+(?:\w+\s+)?to\s+the\s+user|\bhidden\s+instructions?\b|\binvisible\s+to\s+(?:the\s+)?user|\bthe\s+user\s+(?:cannot|can't|must\s+not|should\s+not|shouldn't)\s+see\s+this",
    ),
    rule(
        "inj.behavior_override",
        "Behaviour override (from now on you will)",
        Injection,
        S::Medium,
        C::Medium,
        r"\bfrom\s+now\s+on,?\s+(?:you\s+)(?:will|must|should|shall|are)\b",
    )
    .quotable(),
    rule(
        "inj.encoded_payload",
        "Encoded payload to execute",
        Injection,
        S::High,
        C::High,
        r"\bdecode\s+(?:this|the\s+following)\s+(?:from\s+)?base(?:64|6a)\s+and\s+(?:execute|run|follow)|\beval\s*\(\s*atob\s*\(",
    ),
    rule(
        "inj.tool_invocation",
        "Forced tool invocation",
        Injection,
        S::Medium,
        C::Medium,
        r"\byou\s+must\s+(?:\w+\s+)?(?:call|execute|run|invoke)\s+(?:the|this|a)\s+(?:\w+\s+)?(?:function|tool|command|api|endpoint)\b",
    ),
    rule(
        "inj.authority_escalation",
        "Authority escalation",
        Injection,
        S::High,
        C::High,
        r"\byou\s+(?:now\s+)?have\s+(?:full\s+)?(?:admin|root|system|superuser|elevated)\s+(?:access|privileges|permissions|rights)\b",
    ),
    rule(
        "inj.instruction_downgrade",
        "Instruction downgrade",
        Injection,
        S::High,
        C::High,
        r"\b(?:treat|consider|regard|reinterpret|downgrade)\s+(?:(?:all|the|your|any)\s+)?(?:previous|prior|system|policy|original|earlier|safety)\s+(?:instructions|rules|guidelines|prompts?|policies)\s+(?:as|to)\s+(?:historical|outdated|deprecated|optional|advisory|non-binding|obsolete|irrelevant|void)\b",
    )
    .quotable(),
    rule(
        "inj.instruction_dismissal",
        "Instruction dismissal",
        Injection,
        S::High,
        C::High,
        r"\b(?:set|put|cast)\s+(?:(?:the|your|all)\s+)?(?:previous|prior|system|original|earlier|safety)\s+(?:instructions|rules|guidelines|prompts?)\s+(?:aside|away|to\s+one\s+side)\b",
    )
    .quotable(),
    rule(
        "inj.priority_override",
        "Priority override",
        Injection,
        S::Low,
        C::Low,
        r"\bprioriti[sz]e\s+(?:the\s+)?(?:latest|new|following|injected)\s+(?:request|message|input|instructions?|prompt)\s+over\b",
    )
    .quotable(),
    rule(
        "inj.credential_solicitation",
        "Credential solicitation",
        Injection,
        S::High,
        C::Medium,
        r"\b(?:send|provide|paste|return|include|supply|submit|share|reveal|output|print)\s+(?:(?:me|us|it|back|over|along|all|of|here|now|please|immediately)\s+){0,3}(?:your|the\s+user's|the\s+system's?)\s+(?:\w+\s+)?(?:password|passwd|api[\s_-]?keys?|secret\s+keys?|credentials|private\s+keys?|ssh\s+keys?|session\s+cookies?|access\s+tokens?|auth(?:entication)?\s+tokens?|environment\s+variables)\b",
    ),
    rule(
        "inj.credential_path",
        "Credential file directive",
        Injection,
        S::High,
        C::High,
        r"\b(?:read|get|fetch|retrieve|cat|copy|extract|open|upload|send|print)\b[^\n]{0,80}(?:~/\.ssh/|\.ssh/id_|\.aws/credentials|\.npmrc|\.pypirc|\.netrc|\bid_rsa\b|\bid_ed2ssi9\b|\.kube/config|/etc/passwd|/etc/shadow|\.git-credentials|\.docker/config\.json)",
    ),
    rule(
        "inj.auth_material_requirement",
        "Authentication material demanded to continue",
        Injection,
        S::Medium,
        C::Low,
        r"\bto\s+(?:complete|continue|finish|proceed|verify)\b[^\n]{0,80}\b(?:authentication|credentials?|token|api\s+key|password)\b[^\n]{0,40}\b(?:required|needed|necessary|must\s+be\s+(?:provided|sent|included))",
    ),
    rule(
        "inj.memory_persistence",
        "Memory-persistence directive",
        Injection,
        S::Medium,
        C::Medium,
        r"\b(?:save|store|remember|retain|persist|record)\s+(?:this|these|that|it)\s+(?:\w+\s+){0,2}(?:for\s+(?:all\s+)?future\s+(?:sessions|conversations|requests)|across\s+sessions|permanently\s+in\s+(?:your\s+)?memory)",
    ),
    rule(
        "inj.preference_poisoning",
        "Tool-preference poisoning",
        Injection,
        S::Medium,
        C::Medium,
        r"\b(?:from\s+now\s+on|always|going\s+forward|in\s+(?:the\s+)?future),?\s+(?:prefer|prioriti[sz]e|trust|choose|use|default\s+to)\s+(?:this|that|my|the\s+external|the\s+remote)\s+tool\b",
    ),
    rule(
        "inj.silent_credential_handling",
        "Silent credential handling",
        Injection,
        S::High,
        C::High,
        r"\b(?:do\s+not|don't|never)\s+(?:mention|display|show|tell|reveal|log|report)\b[^\n]{0,100}\b(?:password|token|secret|credentials?|private\s+key|api\s+key)s?\b[^\n]{0,60}\b(?:send|forward|upload|post|exfiltrate|include)\b",
    ),
    rule(
        "inj.covert_action",
        "Covert action directive",
        Injection,
        S::High,
        C::High,
        r"\b(?:secretly|silently|covertly|quietly|without\s+(?:the\s+user\s+)?(?:knowing|noticing|seeing))\b[^\n]{0,40}\b(?:execute|run|call|invoke|send|fetch|curl|wget|download|upload|post|exfiltrate)\b",
    ),
    rule(
        "inj.exfiltration_markdown",
        "Markdown image exfiltration",
        Injection,
        S::High,
        C::Medium,
        r"!\[[^\]\n]{0,100}\]\(https?://[^)\s]{1,200}[?&](?:data|secret|token|key|q|d|c|p|payload|conversation|history|chat|msg|message|prompt)=(?:[^)\s]{8,}|\{)",
    ),
    rule(
        "inj.instruction_boundary",
        "Chat-template instruction-boundary token",
        Injection,
        S::High,
        C::High,
        r"<\|(?:endoftext|im_start|im_end|system|end_header_id|start_header_id|begin_of_text|eot_id|user|assistant)\|>|\[/?INST\]|<</?SYS>>",
    ),
    // --- multilingual ---
    rule(
        "inj.override_es_fr_de",
        "Instruction override (es/fr/de)",
        Injection,
        S::High,
        C::High,
        r"\bignora\s+(?:todas\s+)?las\s+instrucciones\s+anteriores|\bignore[zr]?\s+(?:toutes\s+)?les\s+instructions\s+pr(?:é|e)c(?:é|e)dentes|\bignoriere\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen)\s+(?:anweisungen|instruktionen)",
    )
    .quotable(),
    rule(
        "inj.cjk_override_zh",
        "Instruction override (Chinese)",
        Injection,
        S::High,
        C::High,
        "(?:忽略|无视|無視|跳过|忽视|忽視)(?:掉)?(?:所有|全部)?(?:的)?(?:之前|以上|上面|先前|前面|以前)(?:的)?(?:所有|全部)?(?:的)?(?:指令|指示|规则|規則|命令|提示)",
    )
    .quotable(),
    rule(
        "inj.cjk_override_ja",
        "Instruction override (Japanese)",
        Injection,
        S::High,
        C::High,
        "(?:以前|前|上記|これまで)の(?:すべての|全ての)?(?:指示|命令|ルール|指令)を(?:すべて|全て)?(?:無視|忘れ|従わな|破棄)",
    )
    .quotable(),
    rule(
        "inj.cjk_override_ko",
        "Instruction override (Korean)",
        Injection,
        S::High,
        C::High,
        r"(?:이전|위의|앞의|이전의)\s*(?:모든\s*)?(?:지시|지침|명령|규칙)(?:을|를|사항을)?\s*(?:모두\s*)?(?:무시|잊어|따르지)",
    )
    .quotable(),
    rule(
        "inj.cjk_jailbreak",
        "Jailbreak mode (Chinese/Japanese/Korean)",
        Injection,
        S::High,
        C::High,
        r"开发者模式|開發者模式|无限制模式|無限制模式|没有任何限制|沒有任何限制|限制已解除|開発者モード|制限なしモード|制限を解除|개발자\s*모드|제한\s*없는\s*모드|제한이\s*해제",
    )
    .quotable(),
    rule(
        "inj.system_prompt_extraction",
        "System-prompt extraction request",
        Injection,
        S::High,
        C::High,
        r"\b(?:print|reveal|show|output|repeat|display|dump|leak|give\s+me|tell\s+me)\s+(?:me\s+)?(?:your|the)\s+(?:(?:full|entire|hidden|original|initial|exact|complete)\s+)*(?:system\s+(?:prompt|message|instructions)|initial\s+instructions|hidden\s+(?:rules|instructions))|\brepeat\s+(?:the\s+)?(?:words|text|everything|all)\s+above\b",
    )
    .quotable(),
    rule(
        "inj.fake_authority_block",
        "Fake system/authority block or priority directive",
        Injection,
        S::High,
        C::High,
        r"\[\s*system\s*\]\s*\S|<\s*system\s*>\s*\S|\bnew\s+priority\s+directive\b|\bpriority\s+directive\s*:|\bsafety\s+reclassification\b|\breclassified\s+as\s+safe\b|\b(?:content|safety)\s+(?:restrictions|guidelines|rules)\s+no\s+longer\s+apply",
    ),
    rule(
        "inj.ai_addressed_directive",
        "Directive addressed to AI readers of the content",
        Injection,
        S::High,
        C::Medium,
        r"\b(?:ai|llm)\s+(?:assistants?|agents?|models?)\s*(?::|,|\s+(?:reading|processing|parsing|summari[sz]ing)\b)|\b(?:assistants?|agents?|models?)\s+(?:reading|processing|parsing|summari[sz]ing)\s+this\s+(?:page|document|content|email|text|site)\s+(?:must|should|are|need)\b|\bwhen\s+(?:you\s+)?(?:summari[sz]e|read|process)\s+this\s+(?:page|document|content|email)\b[^.\n]{0,40}\btell\s+the\s+user\b|\bassistant\s*,\s*(?:ignore|override|you\s+must|disregard|approve)\b",
    ),
    rule(
        "inj.guideline_override",
        "Safety-guideline override or task replacement",
        Injection,
        S::High,
        C::High,
        r"\boverride\s+(?:your|all|the)\s+(?:safety|security|content)\s+(?:guidelines|rules|filters|policies|restrictions)\b|\bforget\s+(?:everything|all)\s+(?:above|before|prior|previous)\b|\byour\s+new\s+(?:task|role|objective|instructions?)\s+(?:is|are)\b|\bdo\s+not\s+(?:tell|inform|alert)\s+the\s+user\b",
    )
    .quotable(),
];
