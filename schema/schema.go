// Package schema ships the JSON Schema (draft 2020-12) of the qqdispatch job
// contract, so producers in any language can validate jobs before publishing.
// The Go rules live in dispatcher.Decode; the schema's description lists the
// checks that only the dispatcher makes (subject match, size caps, ...).
package schema

import _ "embed"

// JobSchema is job.schema.json. Treat it as read-only.
//
//go:embed job.schema.json
var JobSchema []byte

// JobSchemaID is the schema's $id, for registering it with a validator.
const JobSchemaID = "https://github.com/qqdispatch/qqdispatch/schema/job.schema.json"
