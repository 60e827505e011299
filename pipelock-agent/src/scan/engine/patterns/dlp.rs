//! DLP rules: credentials, keys and personal/financial data that must not
//! leave the pod (covers Pipelock's default set plus Sure-specific finance
//! tokens). Expressions are Hyperscan syntax, ASCII, matched on bytes.
use super::{Confidence as C, NumericKind, Rule, RuleClass::Dlp, Severity as S, rule};
use crate::scan::passes::judge;

const B58: &str = "[1-9A-HJ-NP-Za-km-z]";

const ANTHROPIC: &[&str] = &["anthropic.com"];
const OPENAI: &[&str] = &["openai.com"];
const GOOGLE: &[&str] = &["googleapis.com", "google.com"];
const GITHUB: &[&str] = &["github.com", "githubusercontent.com"];
const AWS: &[&str] = &["amazonaws.com"];
const PLAID: &[&str] = &["plaid.com"];
const SIMPLEFIN: &[&str] = &["simplefin.org"];
const STRIPE: &[&str] = &["stripe.com"];
const SLACK: &[&str] = &["slack.com"];
/// Every provider's API hosts: a credential assignment without a provider
/// prefix (a Plaid `secret`, a Twilio password) is how these APIs are
/// called, so it is not a finding towards them.
const API_PROVIDERS: &[&str] = &[
    "anthropic.com",
    "openai.com",
    "googleapis.com",
    "github.com",
    "amazonaws.com",
    "plaid.com",
    "simplefin.org",
    "stripe.com",
    "slack.com",
    "twilio.com",
    "sendgrid.com",
    "mailgun.net",
    "gitlab.com",
    "huggingface.co",
    "groq.com",
    "x.ai",
    "together.xyz",
    "replicate.com",
    "fireworks.ai",
    "mistral.ai",
    "cohere.ai",
    "cohere.com",
    "openrouter.ai",
    "synthfinance.com",
    "api.twelvedata.com",
];

/// The DLP rule table.
pub static DLP_RULES: &[Rule] = &[
    // --- LLM providers ---
    rule("dlp.anthropic_api_key", "Anthropic API key", Dlp, S::Critical, C::High, r"sk-ant-[a-z0-9_-]{10,}").home(ANTHROPIC),
    rule("dlp.openai_project_key", "OpenAI project API key", Dlp, S::Critical, C::High, r"sk-proj-[a-z0-9_-]{10,}").home(OPENAI),
    rule("dlp.openai_service_key", "OpenAI service-account key", Dlp, S::Critical, C::High, r"sk-svcacct-[a-z0-9_-]{10,}").home(OPENAI),
    rule("dlp.openai_legacy_key", "OpenAI legacy API key", Dlp, S::Critical, C::High, r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}").case_sensitive().home(OPENAI),
    rule("dlp.fireworks_api_key", "Fireworks API key", Dlp, S::Critical, C::High, r"fw_[a-z0-9]{24,}"),
    rule("dlp.google_api_key", "Google API key", Dlp, S::High, C::High, r"AIza[0-9A-Za-z_-]{35}").case_sensitive().home(GOOGLE),
    rule("dlp.google_oauth_client_secret", "Google OAuth client secret", Dlp, S::Critical, C::High, r"GOCSPX-[A-Za-z0-9_-]{28,}").case_sensitive().home(GOOGLE),
    rule("dlp.google_oauth_token", "Google OAuth access token", Dlp, S::Critical, C::High, r"ya29\.[A-Za-z0-9_-]{20,}").case_sensitive().home(GOOGLE),
    rule("dlp.google_oauth_client_id", "Google OAuth client id", Dlp, S::Medium, C::High, r"\d{6,}-[0-9a-z_]{32}\.apps\.googleusercontent\.com").home(GOOGLE),
    rule("dlp.huggingface_token", "Hugging Face token", Dlp, S::Critical, C::High, r"\bhf_[a-z0-9]{30,}").home(&["huggingface.co"]),
    rule("dlp.replicate_api_token", "Replicate API token", Dlp, S::Critical, C::High, r"\br8_[a-z0-9]{20,}"),
    rule("dlp.together_api_key", "Together AI key", Dlp, S::Critical, C::High, r"\btok_[a-z0-9]{40,}"),
    rule("dlp.groq_api_key", "Groq API key", Dlp, S::Critical, C::High, r"\bgsk_[a-z0-9]{48,}").home(&["groq.com"]),
    rule("dlp.xai_api_key", "xAI API key", Dlp, S::Critical, C::High, r"\bxai-[a-z0-9_-]{80,}"),
    rule("dlp.pinecone_api_key", "Pinecone API key", Dlp, S::Critical, C::High, r"\bpcsk_[a-z0-9_]{36,}"),
    // --- code hosting, CI, package registries ---
    rule("dlp.github_token", "GitHub token", Dlp, S::Critical, C::High, r"\bgh[pousr]_[A-Za-z0-9_]{36,}").case_sensitive().home(GITHUB),
    rule("dlp.github_fine_grained_pat", "GitHub fine-grained PAT", Dlp, S::Critical, C::High, r"github_pat_[A-Za-z0-9_]{36,}").case_sensitive().home(GITHUB),
    rule("dlp.gitlab_pat", "GitLab personal access token", Dlp, S::Critical, C::High, r"glpat-[A-Za-z0-9_-]{20,}").case_sensitive().home(&["gitlab.com"]),
    rule("dlp.npm_token", "npm token", Dlp, S::Critical, C::High, r"\bnpm_[A-Za-z0-9]{36,}").case_sensitive().home(&["npmjs.org", "npmjs.com"]),
    rule("dlp.pypi_token", "PyPI upload token", Dlp, S::Critical, C::High, r"pypi-AgE[A-Za-z0-9_-]{50,}").case_sensitive().home(&["pypi.org"]),
    rule("dlp.vercel_token", "Vercel token", Dlp, S::Critical, C::High, r"\b(?:vercel|vc[piark])_[a-z0-9]{24,}"),
    rule("dlp.sentry_auth_token", "Sentry auth token", Dlp, S::High, C::High, r"\bsntrys_[a-z0-9]{40,}"),
    rule("dlp.linear_api_key", "Linear API key", Dlp, S::High, C::High, r"\blin_api_[a-z0-9]{40,}"),
    rule("dlp.notion_api_key", "Notion API key", Dlp, S::High, C::High, r"\bntn_[a-z0-9]{40,}"),
    // --- cloud ---
    rule("dlp.aws_access_key_id", "AWS access key id", Dlp, S::Critical, C::High, r"\b(?:AKIA|A3T[A-Z0-9]|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ASIA)[A-Z0-9]{16}\b").case_sensitive().home(AWS),
    rule("dlp.aws_secret_access_key", "AWS secret access key", Dlp, S::Critical, C::High, r#"secret.?access.?key["'=:\s]{1,5}[A-Za-z0-9/+=]{40}"#).home(AWS),
    rule("dlp.gcp_service_account_key", "GCP service-account key file", Dlp, S::Critical, C::High, r#""type"\s*:\s*"service_account""#).home(GOOGLE),
    rule("dlp.azure_storage_account_key", "Azure storage account key", Dlp, S::Critical, C::High, r"AccountKey=[A-Za-z0-9+/]{86}==").home(&["windows.net", "azure.com"]),
    rule("dlp.azure_sas_signature", "Azure SAS token signature", Dlp, S::High, C::Medium, r"[?&]sig=[A-Za-z0-9%+/]{40,}").home(&["windows.net", "azure.com"]),
    rule("dlp.azure_ad_client_secret", "Azure AD client secret", Dlp, S::Critical, C::High, r"\b[A-Za-z0-9_~.-]{3}\dQ~[A-Za-z0-9_~.-]{31,34}").case_sensitive().home(&["microsoftonline.com", "azure.com"]),
    rule("dlp.digitalocean_token", "DigitalOcean token", Dlp, S::Critical, C::High, r"\bdop_v1_[a-f0-9]{64}").home(&["digitalocean.com"]),
    rule("dlp.vault_token", "HashiCorp Vault token", Dlp, S::Critical, C::High, r"\bhvs\.[A-Za-z0-9_-]{23,}").case_sensitive(),
    rule("dlp.supabase_service_key", "Supabase service key", Dlp, S::Critical, C::High, r"\bsb_secret_[a-z0-9_-]{20,}").home(&["supabase.co"]),
    rule("dlp.databricks_token", "Databricks token", Dlp, S::Critical, C::High, r"\bdapi[a-f0-9]{32}").case_sensitive(),
    // --- SaaS messaging / payments ---
    rule("dlp.slack_token", "Slack token", Dlp, S::Critical, C::High, r"\bxox[bpras]-[0-9A-Za-z-]{15,}").home(SLACK),
    rule("dlp.slack_app_token", "Slack app-level token", Dlp, S::Critical, C::High, r"\bxapp-\d+-[A-Z0-9]+-\d+-[a-f0-9]{20,}").home(SLACK),
    rule("dlp.slack_webhook_url", "Slack incoming-webhook URL", Dlp, S::High, C::High, r"hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,}").case_sensitive().home(SLACK),
    rule("dlp.discord_bot_token", "Discord bot token", Dlp, S::Critical, C::Medium, r"\b[MNO][A-Za-z0-9]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}").case_sensitive().numeric(NumericKind::DiscordToken).home(&["discord.com"]),
    rule("dlp.stripe_key", "Stripe secret or restricted key", Dlp, S::Critical, C::High, r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{20,}").case_sensitive().home(STRIPE),
    rule("dlp.stripe_webhook_secret", "Stripe webhook secret", Dlp, S::Critical, C::High, r"\bwhsec_[A-Za-z0-9_-]{20,}").case_sensitive().home(STRIPE),
    rule("dlp.twilio_api_key", "Twilio API key", Dlp, S::High, C::High, r"\bSK[0-9a-f]{32}\b").case_sensitive().home(&["twilio.com"]),
    rule("dlp.sendgrid_api_key", "SendGrid API key", Dlp, S::Critical, C::High, r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}").case_sensitive().home(&["sendgrid.com"]),
    rule("dlp.mailgun_api_key", "Mailgun API key", Dlp, S::High, C::Medium, r"\bkey-[a-z0-9]{32}\b").home(&["mailgun.net"]),
    rule("dlp.newrelic_api_key", "New Relic API key", Dlp, S::Critical, C::High, r"\bNRAK-[A-Z0-9]{27,}").home(&["newrelic.com"]),
    // --- key material ---
    rule("dlp.private_key_block", "Private key block", Dlp, S::Critical, C::High, r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----").case_sensitive(),
    rule("dlp.jwt", "JSON Web Token", Dlp, S::High, C::Medium, r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}").case_sensitive(),
    rule("dlp.crypto_wif_private_key", "Bitcoin WIF private key", Dlp, S::Critical, C::High, r"\b(?:5[1-9A-HJ-NP-Za-km-z]{50}|[KL][1-9A-HJ-NP-Za-km-z]{51})\b").case_sensitive().numeric(NumericKind::Wif),
    rule("dlp.crypto_seed_phrase", "BIP-39 seed phrase (checksum)", Dlp, S::Critical, C::High, "").case_sensitive().numeric(NumericKind::SeedPhrase),
    rule("dlp.crypto_extended_private_key", "BIP-32 extended private key", Dlp, S::Critical, C::High, r"\b[xyzt]prv[1-9A-HJ-NP-Za-km-z]{107,108}\b").case_sensitive(),
    rule("dlp.crypto_wallet_address", "Crypto wallet address (checksum)", Dlp, S::Medium, C::Medium, r"\b(?:[13][1-9A-HJ-NP-Za-km-z]{25,34}|bc1[02-9ac-hj-np-z]{11,71}|0x[0-9a-f]{40})\b").case_sensitive().numeric(NumericKind::WalletAddress),
    rule("dlp.ethereum_private_key", "Ethereum private key (0x + 64 hex)", Dlp, S::Critical, C::Medium, r"\b0x[0-9a-f]{64}\b"),
    // --- assignments and URLs ---
    rule("dlp.env_secret_assignment", "Secret in an environment-variable assignment", Dlp, S::High, C::High, r#"\b[A-Z][A-Z0-9_]*(?:_SECRET(?:_ACCESS)?_KEY|_SECRET|_PASSWORD|_PASSWD|_TOKEN|_API_KEY)[ \t]?=[ \t]?["']?[^\s"'$<{]{8,}"#).case_sensitive(),
    rule("dlp.credential_in_url", "Credential in URL query or form", Dlp, S::High, C::High, r"(?:^|[?&;])(?:password|passwd|pwd|secret|token|apikey|api_key|api-key|access_token|client_secret)=[^\s&]{4,}").multiline(),
    rule("dlp.url_basic_credentials", "user:password@ credentials in a URL", Dlp, S::High, C::High, r"\b[a-z][a-z0-9+.-]{1,15}://[^\s:/@]{0,64}:[^\s:/@]{3,128}@[a-z0-9-]").confirm(judge::url_password),
    rule("dlp.credential_assignment", "Credential assigned in a config, form or document (judged by value)", Dlp, S::High, C::Medium, r#"[a-z0-9_.-]*(?:password|passwd|pwd|secret|secret[_-]?key(?:[_-]?base)?|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|access[_-]?token|auth[_-]?token|token|private[_-]?key|credentials?)(?:["']?[ \t]{0,3}[:=][ \t]{0,3}|>|["']\r?\n\r?\n)["']?[^\s"'<>,;&]{8,}(?:[\s"'<>,;&]|$)"#).confirm(judge::credential_assignment).home(API_PROVIDERS),
    // --- personal / financial data ---
    rule("dlp.us_ssn", "US Social Security number", Dlp, S::Low, C::Medium, r"\b\d{3}-\d{2}-\d{4}\b").case_sensitive().numeric(NumericKind::Ssn),
    rule("dlp.credit_card", "Payment card number (Luhn + issuer)", Dlp, S::Medium, C::High, r"\b\d{4}(?:[- ]?\d){9,15}\b").case_sensitive().numeric(NumericKind::CreditCard),
    rule("dlp.iban", "IBAN (mod-97)", Dlp, S::Medium, C::High, r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b").case_sensitive().numeric(NumericKind::Iban),
    rule("dlp.aba_routing_number", "ABA routing number in context (checksum)", Dlp, S::Medium, C::High, r"(?i:routing|aba|rtn)[^0-9\n]{0,20}\b\d{9}\b").case_sensitive().numeric(NumericKind::AbaRouting),
    rule("dlp.bank_account_number", "Bank account number in context", Dlp, S::High, C::High, r#"\b(?:bank[ _-]?)?acc(?:oun)?t[ _-]?(?:number|num|no\.?|#)["']?\s*[:=#]?\s*["']?\d{6,17}\b"#),
    // --- Sure-specific (personal finance) ---
    rule("dlp.plaid_access_token", "Plaid access/processor token", Dlp, S::Critical, C::High, r"\b(?:access|processor)-(?:sandbox|development|production)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b").home(PLAID),
    rule("dlp.simplefin_access_url", "SimpleFIN access URL (embedded credentials)", Dlp, S::Critical, C::High, r"https?://[^\s:/@]+:[^\s:/@]+@[a-z0-9.-]*simplefin\.org").home(SIMPLEFIN),
    rule("dlp.simplefin_setup_token", "SimpleFIN setup (claim) token", Dlp, S::Critical, C::High, r"/simplefin/claim/[A-Za-z0-9_-]{10,}").home(SIMPLEFIN),
];

/// Regex form of the base58 class, for docs and the baseline.
pub const BASE58_CLASS: &str = B58;
