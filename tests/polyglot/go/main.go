// Flightlog from Go: proves that Go code generated from protos/ as shipped (buf.gen.yaml at the
// repository root, protoc-gen-go and protoc-gen-go-grpc) builds and works against a live server.
// It creates a session, registers a file and adds it to the session, streams a listing that
// finds the session, and decodes the google.rpc.ErrorInfo and BadRequest details of an
// INVALID_ARGUMENT, printing one line per check and exiting non-zero at the first failure.
// tests/polyglot/test_go_client.py generates the code, builds this program and runs it in
// `make test`.
//
// By hand, from the repository root, with Debian's golang-go, protoc-gen-go, protoc-gen-go-grpc,
// golang-google-grpc-dev and golang-google-genproto-dev (GOPATH mode, against the Go sources
// those packages install under /usr/share/gocode, so that no module proxy is needed):
//
//	gopath=$(mktemp -d)
//	.venv/bin/buf generate --output "$gopath/src/github.com/flightlog/flightlog"
//	GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" go build -o "$gopath/client" ./tests/polyglot/go
//	FLIGHTLOG_ENDPOINT=127.0.0.1:50051 FLIGHTLOG_API_KEY=... FLIGHTLOG_ORG_ID=og_... "$gopath/client"
//
// FLIGHTLOG_ENDPOINT is host:port (plaintext) or https://host:port (TLS with the system roots).
// FLIGHTLOG_ORG_ID may be empty for a principal that belongs to exactly one org.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	flightlogv1 "github.com/flightlog/flightlog/gen/go/flightlog/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const callTimeout = 30 * time.Second

// 2023-11-14T22:13:20Z in nanoseconds: past 2**53, so a lossy int64 would show.
const baseNs int64 = 1_700_000_000_000_000_000

// ------------------------------------------------------------------------------------------------
// Reporting

var checks int

func pass(what string) {
	checks++
	fmt.Printf("ok   %2d %s\n", checks, what)
}

// fail ends the run at the first failed check; the test's database goes with the test run, so
// what this run created needs no cleanup on failure.
func fail(what, detail string) {
	fmt.Printf("FAIL %2d %s: %s\n", checks+1, what, detail)
	os.Exit(1)
}

func check(what string, ok bool, detail func() string) {
	if !ok {
		fail(what, detail())
	}
	pass(what)
}

func checkEqual[T comparable](what string, got, want T) {
	check(what, got == want, func() string { return fmt.Sprintf("want %v, got %v", want, got) })
}

// succeeded fails the check `what` when a call that should succeed returned an error.
func succeeded(what string, err error) {
	if err != nil {
		fail(what, describe(err))
	}
}

func describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	return fmt.Sprintf("%s: %s %v", st.Code(), st.Message(), st.Details())
}

// bounds renders optional int64 bounds, so that an absent one shows as <nil>.
func bounds(min, max *int64) string {
	show := func(v *int64) string {
		if v == nil {
			return "<nil>"
		}
		return fmt.Sprint(*v)
	}
	return "[" + show(min) + ", " + show(max) + "]"
}

// ------------------------------------------------------------------------------------------------
// Configuration

func requiredEnv(name string) string {
	value := os.Getenv(name)
	if value == "" {
		fmt.Printf("FAIL  0 configuration: environment variable %s is not set\n", name)
		os.Exit(2)
	}
	return value
}

func dial(endpoint string) (*grpc.ClientConn, error) {
	if strings.HasPrefix(endpoint, "https://") {
		creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
		return grpc.Dial(strings.TrimPrefix(endpoint, "https://"), grpc.WithTransportCredentials(creds))
	}
	// grpc.WithInsecure is the plaintext option that every grpc-go release has, Debian's 1.33
	// included (credentials/insecure came in 1.34).
	return grpc.Dial(strings.TrimPrefix(endpoint, "http://"), grpc.WithInsecure())
}

func runID() string {
	buf := make([]byte, 6)
	if _, err := rand.Read(buf); err != nil {
		panic(err)
	}
	return hex.EncodeToString(buf)
}

// ------------------------------------------------------------------------------------------------
// The rich error model: grpc-status-details-bin decoded by grpc-go's status package.

func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

func badRequest(st *status.Status) *errdetails.BadRequest {
	for _, detail := range st.Details() {
		if request, ok := detail.(*errdetails.BadRequest); ok {
			return request
		}
	}
	return nil
}

// reason is the ErrorInfo reason of an ErrorReason value: its name without the prefix, as
// common.proto documents.
func reason(value flightlogv1.ErrorReason) string {
	return strings.TrimPrefix(value.String(), "ERROR_REASON_")
}

// ------------------------------------------------------------------------------------------------
// The scenario

type clients struct {
	catalog  flightlogv1.CatalogServiceClient
	sessions flightlogv1.SessionServiceClient
	auth     metadata.MD
}

// call returns a context that carries the credentials and a deadline for one call.
func (c clients) call() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	return metadata.NewOutgoingContext(ctx, c.auth), cancel
}

func (c clients) createDataset(name string) *flightlogv1.Dataset {
	ctx, cancel := c.call()
	defer cancel()
	response, err := c.catalog.CreateDataset(ctx, &flightlogv1.CreateDatasetRequest{Name: name})
	succeeded("CreateDataset", err)
	return response.GetDataset()
}

func (c clients) registerFile(request *flightlogv1.RegisterFileRequest) *flightlogv1.File {
	ctx, cancel := c.call()
	defer cancel()
	response, err := c.catalog.RegisterFile(ctx, request)
	succeeded("RegisterFile", err)
	return response.GetFile()
}

func (c clients) createSession(request *flightlogv1.CreateSessionRequest) *flightlogv1.Session {
	ctx, cancel := c.call()
	defer cancel()
	response, err := c.sessions.CreateSession(ctx, request)
	succeeded("CreateSession", err)
	return response.GetSession()
}

func (c clients) addSessionFiles(request *flightlogv1.AddSessionFilesRequest) (*flightlogv1.Session, error) {
	ctx, cancel := c.call()
	defer cancel()
	response, err := c.sessions.AddSessionFiles(ctx, request)
	return response.GetSession(), err
}

func (c clients) getSession(sessionID string) *flightlogv1.Session {
	ctx, cancel := c.call()
	defer cancel()
	response, err := c.sessions.GetSession(ctx, &flightlogv1.GetSessionRequest{SessionId: sessionID})
	succeeded("GetSession", err)
	return response.GetSession()
}

// listSessions reads a ListSessions stream to its end and returns the batches it received.
func (c clients) listSessions(request *flightlogv1.ListSessionsRequest) []*flightlogv1.ListSessionsResponse {
	ctx, cancel := c.call()
	defer cancel()
	stream, err := c.sessions.ListSessions(ctx, request)
	succeeded("ListSessions", err)
	var batches []*flightlogv1.ListSessionsResponse
	for {
		batch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return batches
		}
		succeeded("ListSessions stream", err)
		batches = append(batches, batch)
	}
}

func scenario(c clients) {
	run := runID()

	dataset := c.createDataset("go polyglot " + run)
	check("CreateDataset returns a ds_ id", strings.HasPrefix(dataset.GetDatasetId(), "ds_"),
		func() string { return fmt.Sprint(dataset) })

	// One file with two topics, extents within [100, 300] on a timeline offset by baseNs.
	file := c.registerFile(&flightlogv1.RegisterFileRequest{
		DatasetId:         dataset.GetDatasetId(),
		RelativePath:      "flights/" + run + "/go.mcap",
		SizeBytes:         4096,
		UnixEpochOffsetNs: baseNs,
		Partitions: []*flightlogv1.TopicPartitionSpec{
			{
				TopicName:       "/imu",
				SchemaName:      "sensor_msgs/msg/Imu",
				MessageEncoding: "cdr",
				MessageCount:    200,
				Extents:         []*flightlogv1.TimelineExtent{{MinTimestampNs: 100, MaxTimestampNs: 250}},
			},
			{
				TopicName:       "/odom",
				SchemaName:      "nav_msgs/msg/Odometry",
				MessageEncoding: "cdr",
				MessageCount:    50,
				Extents:         []*flightlogv1.TimelineExtent{{MinTimestampNs: 150, MaxTimestampNs: 300}},
			},
		},
	})
	check("RegisterFile returns an fl_ id", strings.HasPrefix(file.GetFileId(), "fl_"),
		func() string { return fmt.Sprint(file) })
	fileWindow := bounds(proto.Int64(baseNs+100), proto.Int64(baseNs+300))
	checkEqual("RegisterFile: the file window is its extents plus the offset",
		bounds(file.MinTimestampNs, file.MaxTimestampNs), fileWindow)

	name := "go polyglot " + run
	session := c.createSession(&flightlogv1.CreateSessionRequest{Name: name, Tags: []string{"polyglot", "go"}})
	sessionID := session.GetSessionId()
	check("CreateSession returns an ss_ id", strings.HasPrefix(sessionID, "ss_"),
		func() string { return fmt.Sprint(session) })
	checkEqual("CreateSession keeps the name", session.GetName(), name)
	checkEqual("CreateSession: a new session has no bounds (optional int64 absent)",
		bounds(session.MinTimestampNs, session.MaxTimestampNs), bounds(nil, nil))

	after, err := c.addSessionFiles(&flightlogv1.AddSessionFilesRequest{
		SessionId: sessionID,
		Files:     []*flightlogv1.SessionFileSpec{{FileId: file.GetFileId()}},
	})
	succeeded("AddSessionFiles", err)
	checkEqual("AddSessionFiles whole: the session bounds are the file window",
		bounds(after.MinTimestampNs, after.MaxTimestampNs), fileWindow)

	// Two more sessions of this run, so that the listing below spans several batches.
	want := map[string]bool{sessionID: true}
	for _, suffix := range []string{"b", "c"} {
		want[c.createSession(&flightlogv1.CreateSessionRequest{Name: name + " " + suffix}).GetSessionId()] = true
	}

	// This run's sessions, two a batch, read to the end of the stream.
	batches := c.listSessions(&flightlogv1.ListSessionsRequest{
		Filter:   &flightlogv1.SessionFilter{NameContains: run},
		PageSize: 2,
	})
	seen := map[string]bool{}
	repeated := 0
	var listed *flightlogv1.Session
	for _, batch := range batches {
		for _, s := range batch.GetSessions() {
			if seen[s.GetSessionId()] {
				repeated++
			}
			seen[s.GetSessionId()] = true
			if s.GetSessionId() == sessionID {
				listed = s
			}
		}
	}
	check(fmt.Sprintf("ListSessions streamed %d session(s) in %d batches of at most 2 to the end", len(seen), len(batches)),
		len(batches) >= 2, func() string { return fmt.Sprint(batches) })
	checkEqual("ListSessions repeats no session", repeated, 0)
	checkEqual("ListSessions filtered by name lists exactly this run's three sessions",
		fmt.Sprint(seen), fmt.Sprint(want))
	checkEqual("ListSessions shows the session with its bounds",
		bounds(listed.MinTimestampNs, listed.MaxTimestampNs), fileWindow)

	// A deliberate INVALID_ARGUMENT: a window with a lower bound only.
	_, err = c.addSessionFiles(&flightlogv1.AddSessionFilesRequest{
		SessionId: sessionID,
		Files: []*flightlogv1.SessionFileSpec{
			{FileId: file.GetFileId(), RangeMinTimestampNs: proto.Int64(baseNs + 100)},
		},
	})
	check("AddSessionFiles with only range_min_timestamp_ns fails", err != nil,
		func() string { return "it succeeded" })
	st, ok := status.FromError(err)
	check("the error is a gRPC status", ok, func() string { return err.Error() })
	checkEqual("the status code is INVALID_ARGUMENT", st.Code(), codes.InvalidArgument)
	info := errorInfo(st)
	check("the status details hold a google.rpc.ErrorInfo", info != nil,
		func() string { return fmt.Sprint(st.Details()) })
	checkEqual("ErrorInfo domain", info.GetDomain(), "flightlog")
	checkEqual("ErrorInfo reason", info.GetReason(), reason(flightlogv1.ErrorReason_ERROR_REASON_INVALID_REQUEST))
	request := badRequest(st)
	check("the status details hold a google.rpc.BadRequest", request != nil,
		func() string { return fmt.Sprint(st.Details()) })
	var fields []string
	for _, violation := range request.GetFieldViolations() {
		fields = append(fields, violation.GetField())
	}
	check(fmt.Sprintf("BadRequest names the offending field under files[0] (%s)", strings.Join(fields, ", ")),
		len(fields) > 0 && strings.HasPrefix(fields[0], "files[0]"),
		func() string { return fmt.Sprint(request) })

	unchanged := c.getSession(sessionID)
	checkEqual("the rejected AddSessionFiles changed nothing",
		bounds(unchanged.MinTimestampNs, unchanged.MaxTimestampNs), fileWindow)

	// Clean up what this run made (datasets have no delete RPC).
	ctx, cancel := c.call()
	defer cancel()
	for id := range want {
		_, err = c.sessions.DeleteSession(ctx, &flightlogv1.DeleteSessionRequest{SessionId: id})
		succeeded("DeleteSession", err)
	}
	_, err = c.catalog.DeleteFile(ctx, &flightlogv1.DeleteFileRequest{FileId: file.GetFileId()})
	succeeded("DeleteFile", err)
	pass("DeleteSession x3 and DeleteFile")
}

func main() {
	endpoint := requiredEnv("FLIGHTLOG_ENDPOINT")
	auth := metadata.Pairs("authorization", "Bearer "+requiredEnv("FLIGHTLOG_API_KEY"))
	if orgID := os.Getenv("FLIGHTLOG_ORG_ID"); orgID != "" {
		auth.Set("x-org-id", orgID)
	}

	conn, err := dial(endpoint)
	if err != nil {
		fmt.Printf("FAIL  0 dial %s: %v\n", endpoint, err)
		os.Exit(1)
	}
	defer conn.Close()

	scenario(clients{
		catalog:  flightlogv1.NewCatalogServiceClient(conn),
		sessions: flightlogv1.NewSessionServiceClient(conn),
		auth:     auth,
	})
	fmt.Printf("all %d checks passed against %s\n", checks, endpoint)
}
