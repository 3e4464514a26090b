// SPDX-License-Identifier: MIT
pragma solidity 0.8.19;

import {IMorpho, Id, MarketParams} from "@morpho-org/morpho-blue/src/interfaces/IMorpho.sol";
import {IOracle} from "@morpho-org/morpho-blue/src/interfaces/IOracle.sol";
import {ORACLE_PRICE_SCALE} from "@morpho-org/morpho-blue/src/libraries/ConstantsLib.sol";
import {MarketParamsLib} from "@morpho-org/morpho-blue/src/libraries/MarketParamsLib.sol";
import {MathLib} from "@morpho-org/morpho-blue/src/libraries/MathLib.sol";
import {SharesMathLib} from "@morpho-org/morpho-blue/src/libraries/SharesMathLib.sol";
import {MorphoStorageLib} from "@morpho-org/morpho-blue/src/libraries/periphery/MorphoStorageLib.sol";

/// @title MorphoHealthLens
/// @notice An account's health on Morpho Blue, computed by a contract: Morpho has no health
///         view, so this is what a contract caller (a keeper contract, a vault) runs to learn
///         whether a borrower is liquidatable. The peer benchmark's counterpart of margincall's
///         `check_margin` read by a contract.
/// @dev Morpho's leanest read path: one `extSloads` call for the two words the check needs (the
///      borrower's borrow shares and collateral, the market's total borrow assets and shares),
///      then the oracle, then the same arithmetic and rounding as `Morpho._isHealthy`
///      (borrowed rounded up, max borrow rounded down). Interest accrued since the market's last
///      update is not included, as in `MorphoLib`.
/// @custom:security Read-only; trusts Morpho and the market's oracle.
contract MorphoHealthLens {
    using MarketParamsLib for MarketParams;
    using MathLib for uint256;
    using SharesMathLib for uint256;

    IMorpho public immutable MORPHO;

    constructor(address morpho) {
        MORPHO = IMorpho(morpho);
    }

    /// @notice The borrower's debt, borrowing capacity and health in one market.
    /// @param marketParams The market.
    /// @param borrower The account.
    /// @return borrowed The debt in loan token units, rounded up.
    /// @return maxBorrow Collateral value times LLTV in loan token units, rounded down.
    /// @return healthy Whether `maxBorrow >= borrowed` (not liquidatable).
    function health(MarketParams memory marketParams, address borrower)
        external
        view
        returns (uint256 borrowed, uint256 maxBorrow, bool healthy)
    {
        Id id = marketParams.id();
        bytes32[] memory slots = new bytes32[](2);
        slots[0] = MorphoStorageLib.positionBorrowSharesAndCollateralSlot(id, borrower);
        slots[1] = MorphoStorageLib.marketTotalBorrowAssetsAndSharesSlot(id);
        bytes32[] memory words = MORPHO.extSloads(slots);
        uint256 position = uint256(words[0]);
        uint256 totals = uint256(words[1]);
        borrowed = uint256(uint128(position)).toAssetsUp(uint128(totals), totals >> 128);
        uint256 price = IOracle(marketParams.oracle).price();
        maxBorrow = (position >> 128).mulDivDown(price, ORACLE_PRICE_SCALE).wMulDown(marketParams.lltv);
        healthy = maxBorrow >= borrowed;
    }
}
