# TenSafe TSSP load policy (Rego v1), evaluated in-process with regopy before an adapter loads.
#
# input  = the verified manifest (docs/TSSP_SPEC.md §7)
# data.tensafe.tssp.config = parameters; each is optional, an absent one does not constrain.
#
# Every deny reason is "<rule>: <explanation>", <rule> being the config key that fired.
# The caller loads a package only if `allow` is exactly true: false, undefined or an
# evaluation error all mean deny.
package tensafe.tssp

cfg := data.tensafe.tssp.config

deny contains msg if {
	allowed := cfg.allowed_signers
	not input.signer.key_id in allowed
	msg := sprintf("allowed_signers: signer %s is not an allowed package signer", [input.signer.key_id])
}

deny contains msg if {
	input.dp.epsilon > cfg.max_epsilon
	msg := sprintf("max_epsilon: epsilon %v exceeds the maximum %v", [input.dp.epsilon, cfg.max_epsilon])
}

deny contains msg if {
	allowed := cfg.allowed_base_models
	not input.base_model.ref in allowed
	msg := sprintf("allowed_base_models: base model %s is not allowed", [input.base_model.ref])
}

deny contains msg if {
	allowed := cfg.allowed_base_model_digests
	not input.base_model.weights_sha256 in allowed
	msg := sprintf("allowed_base_model_digests: base model weights %s are not allowed", [input.base_model.weights_sha256])
}

deny contains msg if {
	cfg.required_sampling_mode != input.dp.sampling_mode
	msg := sprintf("required_sampling_mode: sampling mode %s, required %s", [input.dp.sampling_mode, cfg.required_sampling_mode])
}

deny contains msg if {
	cfg.required_guarantee != input.dp.guarantee
	msg := sprintf("required_guarantee: guarantee %s, required %s", [input.dp.guarantee, cfg.required_guarantee])
}

deny contains msg if {
	input.dp.delta > cfg.max_delta
	msg := sprintf("max_delta: delta %v exceeds the maximum %v", [input.dp.delta, cfg.max_delta])
}

# delta must be below 1/N, or a mechanism that publishes one record outright would qualify.
deny contains msg if {
	cfg.require_delta_below_inverse_n == true
	input.dp.delta * input.dp.accounting_dataset_size >= 1
	msg := sprintf("require_delta_below_inverse_n: delta %v is not below 1/N for N = %v", [input.dp.delta, input.dp.accounting_dataset_size])
}

deny contains msg if {
	cfg.require_inclusion_proofs == true
	input.ledger.inclusion_proofs == 0
	msg := "require_inclusion_proofs: the package carries no inclusion proof against a signed ledger checkpoint"
}

deny contains msg if {
	allowed := cfg.allowed_tenants
	not input.tenant_id in allowed
	msg := sprintf("allowed_tenants: tenant %s is not allowed", [input.tenant_id])
}

deny contains msg if {
	input.dp.steps > cfg.max_steps
	msg := sprintf("max_steps: %v steps exceed the maximum %v", [input.dp.steps, cfg.max_steps])
}

# A seeded noise stream is predictable: such a run is not private, whatever epsilon says.
deny contains msg if {
	not cfg.allow_test_mode == true
	input.dp.test_mode == true
	msg := "test_mode: the certificate comes from a seeded (test-mode) run, whose noise is predictable"
}

# Allow only a TSSP input document, with a config object present, and no deny reason.
allow if {
	is_object(cfg)
	input.dp.type == "https://tensafe.dev/dp-certificate/v1"
	count(deny) == 0
}
