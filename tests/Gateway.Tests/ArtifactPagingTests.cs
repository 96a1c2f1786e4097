using System.Buffers.Text;
using System.Text;
using Grpc.Core;
using InterpMesh.Client;
using InterpMesh.Contracts.V1;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Gateway.Tests;

/// <summary>A gateway with small pages (default 3, at most 5) and no model or plugins: listings are the subject.</summary>
public sealed class SmallPagesGateway : IAsyncLifetime
{
    private WebApplication? gateway;
    private readonly string plugins = TempFolders.Create("interpmesh-gw-pages-");
    private readonly string data = TempFolders.Create("interpmesh-gw-pages-");

    public string Address { get; private set; } = "";
    public Grpc.Net.Client.GrpcChannel Channel { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        (gateway, Address) = await Mesh.StartGatewayAsync([$"http://127.0.0.1:{Ports.Free()}"], plugins, data, new()
        {
            ["Gateway:Limits:DefaultPageSize"] = "3",
            ["Gateway:Limits:MaxPageSize"] = "5",
        });
        Channel = Mesh.Channel(Address);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Mesh.StopAsync(gateway);
        TempFolders.Delete(plugins, data);
    }
}

/// <summary>
/// Issue #20, ListArtifacts pages: page_size (0 = the default; over the maximum lowered to it;
/// negative refused), an opaque page_token that continues after the last name served, in name
/// order, and a bad token refused saying so. The client library and the CLI follow the pages.
/// </summary>
[Collection("gateways")]
public sealed class ArtifactPagingTests(SmallPagesGateway gateway) : IClassFixture<SmallPagesGateway>
{
    private ArtifactService.ArtifactServiceClient Artifacts => new(gateway.Channel);

    /// <summary>Stores empty artifacts under a fresh prefix, in the order given; returns the prefix.</summary>
    private async Task<string> Store(params string[] names)
    {
        string prefix = $"p{Guid.NewGuid():N}/";
        await StoreUnder(prefix, names);
        return prefix;
    }

    /// <summary>Stores empty artifacts <c>prefix + name</c>, each with metadata naming it.</summary>
    private async Task StoreUnder(string prefix, params string[] names)
    {
        foreach (var name in names)
        {
            using var call = Artifacts.PutArtifact(Mesh.As(Mesh.AliceKey));
            await call.RequestStream.WriteAsync(new ArtifactChunk { Header = new Contracts.V1.ArtifactInfo { Name = prefix + name, MetadataJson = $$"""{"n":"{{name}}"}""" } });
            await call.RequestStream.CompleteAsync();
            Assert.Equal(prefix + name, (await call.ResponseAsync).Name);
        }
    }

    private Task<ListArtifactsResponse> Page(string prefix, int size = 0, string token = "") =>
        Artifacts.ListArtifactsAsync(new ListArtifactsRequest { Prefix = prefix, PageSize = size, PageToken = token }, Mesh.As(Mesh.ReaderKey)).ResponseAsync;

    [Fact]
    public async Task Pages_of_the_default_size_list_every_artifact_once_in_name_order()
    {
        string prefix = await Store("m", "c", "x", "a", "k", "b", "z", "q");
        var pages = new List<List<string>>();
        string token = "";
        do
        {
            var page = await Page(prefix, token: token);
            pages.Add([.. page.Artifacts.Select(a => a.Name[prefix.Length..])]);
            token = page.NextPageToken;
        }
        while (token.Length > 0 && pages.Count < 10);
        Assert.Equal([["a", "b", "c"], ["k", "m", "q"], ["x", "z"]], pages);
        // The same listing again gives the same pages.
        var first = await Page(prefix);
        Assert.Equal(["a", "b", "c"], first.Artifacts.Select(a => a.Name[prefix.Length..]));
        Assert.Equal("""{"n":"a"}""", first.Artifacts[0].MetadataJson);
    }

    [Fact]
    public async Task A_page_continues_after_its_last_name_when_artifacts_come_and_go_between_calls()
    {
        string prefix = await Store("b", "d", "f", "h", "j");
        var first = await Page(prefix, size: 2);
        Assert.Equal(["b", "d"], first.Artifacts.Select(a => a.Name[prefix.Length..]));
        // Meanwhile: one listed is deleted, one not yet listed is deleted, one sorts before the cursor, one after it.
        var admin = new ArtifactService.ArtifactServiceClient(gateway.Channel);
        Assert.True((await admin.DeleteArtifactAsync(new DeleteArtifactRequest { Name = prefix + "b" }, Mesh.As(Mesh.AdminKey))).Deleted);
        Assert.True((await admin.DeleteArtifactAsync(new DeleteArtifactRequest { Name = prefix + "f" }, Mesh.As(Mesh.AdminKey))).Deleted);
        await StoreUnder(prefix, "a", "e");
        var second = await Page(prefix, size: 2, token: first.NextPageToken);
        Assert.Equal(["e", "h"], second.Artifacts.Select(a => a.Name[prefix.Length..]));
        var third = await Page(prefix, size: 2, token: second.NextPageToken);
        Assert.Equal(["j"], third.Artifacts.Select(a => a.Name[prefix.Length..]));
        Assert.Equal("", third.NextPageToken);
    }

    [Fact]
    public async Task A_page_size_over_the_maximum_is_lowered_to_it_and_a_negative_one_is_refused()
    {
        string prefix = await Store("1", "2", "3", "4", "5", "6", "7");
        var big = await Page(prefix, size: 1000);
        Assert.Equal(["1", "2", "3", "4", "5"], big.Artifacts.Select(a => a.Name[prefix.Length..]));
        Assert.NotEqual("", big.NextPageToken);
        Assert.Equal(["6", "7"], (await Page(prefix, size: 1000, token: big.NextPageToken)).Artifacts.Select(a => a.Name[prefix.Length..]));
        var negative = await Assert.ThrowsAsync<RpcException>(() => Page(prefix, size: -1));
        Assert.Equal(StatusCode.InvalidArgument, negative.StatusCode);
        Assert.Equal("page_size is -1; use 0 for the default (3) or up to 5", negative.Status.Detail);
    }

    private static string Token(string text) => Base64Url.EncodeToString(Encoding.UTF8.GetBytes(text));

    public static TheoryData<string> BadTokens() =>
    [
        "not a token",
        "%%%",
        Token("a1\nname"),
        Token("b1\nx\n"),
        Token("a1\n../escape\n"),
        Token("a1\nother/x\nmine/"),
        new string('A', 5000),
    ];

    [Theory]
    [MemberData(nameof(BadTokens))]
    public async Task A_token_the_gateway_did_not_issue_is_refused_saying_so(string token)
    {
        var bad = await Assert.ThrowsAsync<RpcException>(() => Page("mine/", token: token));
        Assert.Equal(StatusCode.InvalidArgument, bad.StatusCode);
        Assert.Equal("page_token is not one this gateway issued: pass a previous response's next_page_token unchanged, or none to start from the first page", bad.Status.Detail);
        // The gateway keeps serving.
        Assert.NotNull(await Page("mine/"));
    }

    [Fact]
    public async Task A_token_sent_with_another_prefix_is_refused_and_a_prefix_longer_than_any_name_too()
    {
        string prefix = await Store("a", "b", "c", "d");
        var first = await Page(prefix, size: 2);
        var other = await Assert.ThrowsAsync<RpcException>(() => Page(prefix + "a", size: 2, token: first.NextPageToken));
        Assert.Equal(StatusCode.InvalidArgument, other.StatusCode);
        Assert.Equal("page_token belongs to a listing with another prefix: send the same prefix as the call that returned it, or no token to start again", other.Status.Detail);
        var longPrefix = await Assert.ThrowsAsync<RpcException>(() => Page(new string('p', 100_000)));
        Assert.Equal(StatusCode.InvalidArgument, longPrefix.StatusCode);
        Assert.Equal("prefix is 100000 characters long; no artifact name is longer than 200", longPrefix.Status.Detail);
    }

    [Fact]
    public async Task The_client_library_follows_the_pages_to_the_last()
    {
        var names = Enumerable.Range(0, 11).Select(i => $"n{i:D2}").Reverse().ToArray();
        string prefix = await Store(names);
        using var client = MeshClient.Connect(gateway.Address, Mesh.ReaderKey);
        var all = await client.ListArtifactsAsync(prefix);
        Assert.Equal(names.Order(StringComparer.Ordinal).Select(n => prefix + n), all.Artifacts.Select(a => a.Name));
        Assert.Equal("", all.NextPageToken);
        var streamed = new List<string>();
        await foreach (var a in client.EnumerateArtifactsAsync(prefix))
            streamed.Add(a.Name);
        Assert.Equal(all.Artifacts.Select(a => a.Name), streamed);
    }
}
