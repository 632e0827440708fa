// Package dispatcher owns the qqdispatch domain: the send-job contract
// (types, decoding, validation), the terminal outcomes, the error contract that
// drives retries, and the per-job pipeline.
//
// It imports no other qqdispatch package. The outside systems it needs — the
// QQ OpenAPI, JetStream, the rate limiter — are reached through the small
// interfaces declared here and implemented by adapters in other packages.
package dispatcher
