// Package qqapi is a client for the QQ Bot OpenAPI: the access token, the
// four message endpoints (C2C, group, guild channel, guild DM), rich-media
// upload, and the platform's errors as typed, classified values.
//
// The client passes message bodies through byte for byte, so fields the
// platform adds need no code change here. It caches the access token and
// renews it once, shared by all callers, inside the token's last minute (the
// only time the platform issues a new one).
//
// Errors: every answer goes through CheckResponse, which reads the body
// before the status (the platform sends errors with 200, 201, 202, 400 and
// 500 alike) and yields an *APIError carrying a Class from the platform's
// error table. A call that got no answer fails with a *TransportError. The
// client retries only a call whose token was refused, once, with a fresh
// token; every other retry decision belongs to the caller and is made from
// ClassOf(err).
//
// Neither the app secret nor an access token appears in an error, in a
// printed Config or Client, or in a URL: they travel in the token request
// body and the Authorization header only.
//
// This package imports no other qqdispatch package; the dispatcher's Sender
// adapter maps Class to dispatcher.ErrorClass by value (the lists match).
package qqapi
